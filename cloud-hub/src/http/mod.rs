//! REST API (axum). Views of the store, evidence snapshot upload, health and Prometheus metrics.
//!
//! - `GET /api/v1/events?site=&device=&camera=&class=&kind=&event_type=&from=&to=&limit=` —
//!   newest first
//! - `GET /api/v1/events/{id}` — one event
//! - `GET /api/v1/telemetry?site=&device=&source=&metric=&from=&to=&limit=` — raw telemetry,
//!   newest first
//! - `GET /api/v1/telemetry/series…`, `GET /api/v1/telemetry/series/query…` — telemetry time
//!   series and rollups (see [`series`])
//! - `GET /api/v1/quarantine?reason=&site=&device=&from=&to=&limit=` — refused messages,
//!   newest first
//! - `GET /api/v1/events/{id}/snapshot` — the evidence JPEG its `rule.snapshot` names
//! - `PUT /api/v1/snapshots/{id}` — an edge agent uploads an evidence JPEG (see [`put_snapshot`])
//! - `GET /api/v1/snapshots/{id}` — an evidence JPEG
//! - `GET /api/v1/devices` — latest status per device
//! - `GET /api/v1/health` — liveness, ingest and evidence counters, store sizes
//! - `GET /metrics` — Prometheus text
//!
//! Errors are JSON `{"error": "..."}` naming the parameter, header or id at fault.
//!
//! With `[auth] http = "required"` a middleware checks `Authorization: Bearer <token>` against
//! the [`TokenRegistry`] and the role [`access_for`] the route needs; evidence uploads are
//! checked by [`put_snapshot`] against the uploading device's signature instead.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use csb_wire::sign::{verify_upload, SigningKey, UPLOAD_SIGNATURE_HEADER};
use csb_wire::EventKind;
use serde_json::json;
use tokio::sync::Semaphore;
use ulid::Ulid;

pub mod metrics;
pub mod ngsi;
mod series;
pub mod tokens;

use crate::http::tokens::{Role, TokenInfo, TokenRegistry};
use crate::ingest::devices::DeviceRegistry;
use crate::ingest::metrics::{HttpAuthRefusal, Metrics, UploadReject};
use crate::ingest::mqtt::probe::BrokerState;
use crate::storage::quarantine::RejectReason;
use crate::storage::quarantine::{QuarantineEntry, QuarantineQuery};
use crate::storage::store::{
    AggregateGroup, ClassFilter, EventAggregate, EventAggregateQuery, EventDim, EventQuery,
    NewSnapshot, PutSnapshot, Snapshot, Store, StoreError, TelemetryQuery, DEFAULT_LIMIT,
    MAX_BUCKETS, MAX_LIMIT,
};
use crate::support::loglimit::LogLimiter;
use crate::support::timeparse::parse_time_ms;
use metrics::{render_prometheus, render_store_health};

/// Uploader of a snapshot, `{site}/{device}` (required on upload, echoed on download).
pub const DEVICE_HEADER: &str = "x-csb-device";
/// The event a snapshot belongs to, a ULID (optional on upload, echoed on download).
pub const EVENT_HEADER: &str = "x-csb-event";
/// Snapshots never change once stored, so clients may keep them; `private` because evidence
/// pictures must not sit in shared caches.
pub const SNAPSHOT_CACHE_CONTROL: &str = "private, max-age=86400";
/// Every JPEG starts with SOI (FF D8) followed by the next marker's FF.
const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// Bound on one store call from a request; the store's own scan limit bounds the work behind it.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Store calls that may run at once; each may hold a blocking thread for a scan, so more
/// requests than this get 503 instead of piling up threads.
const MAX_CONCURRENT_STORE_CALLS: usize = 16;

pub struct ApiState<S> {
    store: Arc<S>,
    metrics: Arc<Metrics>,
    started: Instant,
    mqtt_addr: SocketAddr,
    store_slots: Arc<Semaphore>,
    snapshot_max_bytes: usize,
    /// `Some` with `[auth] http = "required"`.
    access: Option<HttpAccess>,
    /// The county model (`county_dir`), when one is loaded.
    county: Option<Arc<crate::platform::county::County>>,
    /// The digital twin (with a county model): NGSI-LD routes, health and metrics.
    twin: Option<Arc<crate::platform::twin::Twin>>,
    /// The MQTT broker's self-probe: health says whether devices can get in.
    broker: Option<Arc<crate::ingest::mqtt::probe::BrokerHealth>>,
}

impl<S> ApiState<S> {
    pub fn new(
        store: Arc<S>,
        metrics: Arc<Metrics>,
        started: Instant,
        mqtt_addr: SocketAddr,
        snapshot_max_bytes: usize,
    ) -> Self {
        ApiState {
            store,
            metrics,
            started,
            mqtt_addr,
            store_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_STORE_CALLS)),
            snapshot_max_bytes,
            access: None,
            county: None,
            twin: None,
            broker: None,
        }
    }

    /// Reports the broker's health (`mqtt.broker`; `degraded` and 503 while it fails).
    pub fn with_broker(mut self, health: Arc<crate::ingest::mqtt::probe::BrokerHealth>) -> Self {
        self.broker = Some(health);
        self
    }

    /// Serves the twin: the NGSI-LD API and the change stream ([`crate::http::ngsi`]).
    pub fn with_twin(mut self, twin: Arc<crate::platform::twin::Twin>) -> Self {
        self.twin = Some(twin);
        self
    }

    /// Serves the county model at `GET /api/v1/county`.
    pub fn with_county(mut self, county: Arc<crate::platform::county::County>) -> Self {
        self.county = Some(county);
        self
    }

    /// Requires bearer tokens and signed uploads (`[auth] http = "required"`).
    pub fn with_http_access(mut self, access: HttpAccess) -> Self {
        self.access = Some(access);
        self
    }
}

// Manual impl: deriving would demand `S: Clone`.
impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            started: self.started,
            mqtt_addr: self.mqtt_addr,
            store_slots: self.store_slots.clone(),
            snapshot_max_bytes: self.snapshot_max_bytes,
            access: self.access.clone(),
            county: self.county.clone(),
            twin: self.twin.clone(),
            broker: self.broker.clone(),
        }
    }
}

pub fn router<S: Store>(state: ApiState<S>) -> Router {
    // Bounds what the body extractor reads, so an oversized upload without a Content-Length
    // (chunked) is cut off at the limit instead of being buffered whole.
    let upload_limit = DefaultBodyLimit::max(state.snapshot_max_bytes);
    let twin_routes = match &state.twin {
        Some(t) => crate::http::ngsi::router(t.clone()),
        None => Router::new(),
    };
    Router::new()
        .route("/api/v1/events", get(events::<S>))
        .route("/api/v1/events/aggregate", get(events_aggregate::<S>))
        .route("/api/v1/events/{id}", get(event_by_id::<S>))
        .route("/api/v1/events/{id}/snapshot", get(event_snapshot::<S>))
        .route("/api/v1/telemetry", get(telemetry::<S>))
        .route("/api/v1/telemetry/series", get(series::list::<S>))
        .route("/api/v1/telemetry/series/query", get(series::query::<S>))
        .route("/api/v1/quarantine", get(quarantine::<S>))
        .route(
            "/api/v1/snapshots/{id}",
            get(get_snapshot::<S>)
                .put(put_snapshot::<S>)
                .layer(upload_limit),
        )
        .route("/api/v1/devices", get(devices::<S>))
        .route("/api/v1/county", get(county::<S>))
        .route("/api/v1/inventory", get(inventory::<S>))
        .route("/api/v1/health", get(health::<S>))
        .route("/metrics", get(metrics::<S>))
        .merge(twin_routes)
        .fallback(not_found)
        // Outside the routes, so unknown paths are refused alike (no probing for endpoints);
        // a no-op with `http = "off"`.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_access::<S>,
        ))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// What `[auth] http = "required"` checks requests with.
#[derive(Clone)]
pub struct HttpAccess {
    tokens: Arc<TokenRegistry>,
    /// Evidence upload keys: the same credentials the devices use on MQTT.
    devices: Arc<DeviceRegistry>,
    /// Refusals are logged at most a few lines a minute (always counted).
    limiter: Arc<Mutex<LogLimiter>>,
}

impl HttpAccess {
    pub fn new(tokens: Arc<TokenRegistry>, devices: Arc<DeviceRegistry>) -> Self {
        HttpAccess {
            tokens,
            devices,
            limiter: Arc::new(Mutex::new(LogLimiter::new(10, Duration::from_secs(60)))),
        }
    }

    /// Logs a refusal: method, path, reason and the token's name, never a credential.
    fn log_refusal(&self, method: &Method, path: &str, reason: HttpAuthRefusal, who: &str) {
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
}

enum PathMatch {
    Exact(&'static str),
    /// The prefix followed by one path segment (an id).
    Item(&'static str),
    /// The prefix followed by anything.
    Under(&'static str),
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
    Rule {
        method: "GET",
        path: PathMatch::Exact("/api/v1/health"),
        access: Access::Open,
    },
    Rule {
        method: "PUT",
        path: PathMatch::Item("/api/v1/snapshots/"),
        access: Access::Device,
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
const CHALLENGE_SIGNATURE: &str = "CSB-Signature realm=\"csb-hub\"";

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, HttpAuthRefusal> {
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
    if who.role < needed {
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

/// The `[auth] http = "required"` gate in front of every route (see [`access_for`]).
async fn require_access<S: Store>(
    State(st): State<ApiState<S>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(access) = &st.access else {
        return next.run(req).await;
    };
    let needed = match access_for(req.method(), req.uri().path()) {
        // `Device`: put_snapshot verifies the signature once it has the body.
        Access::Open | Access::Device => return next.run(req).await,
        Access::Role(role) => role,
    };
    match check_bearer(
        access,
        req.headers(),
        req.method(),
        req.uri().path(),
        needed,
    ) {
        Ok(who) => {
            // Handlers may want to know who asked (audit of future write endpoints).
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err((reason, who, e)) => {
            st.metrics.refuse_http(reason);
            access.log_refusal(req.method(), req.uri().path(), reason, &who);
            e.into_response()
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// `WWW-Authenticate` of a 401 (and of a 403 for too low a role).
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            challenge: None,
        }
    }

    fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// At most 64 characters of client input, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses an id from the path; `what` names it in the error.
fn parse_id(what: &str, path: Result<Path<String>, PathRejection>) -> Result<Ulid, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(format!("{what} in the path: {e}")))?;
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
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

/// Runs one store call with a concurrency slot and a time limit.
async fn store_call<T>(
    slots: &Semaphore,
    what: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let Ok(_slot) = slots.try_acquire() else {
        tracing::warn!(what, "store busy: too many concurrent requests");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many concurrent requests; retry {what} shortly"),
        ));
    };
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::warn!(what, "store call timed out");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} took longer than {STORE_TIMEOUT:?}; narrow the query"),
            ))
        }
    }
}

const EVENT_PARAMS: [&str; 13] = [
    "site",
    "device",
    "camera",
    "class",
    "kind",
    "event_type",
    "zone",
    "category",
    "phase",
    "town",
    "from",
    "to",
    "limit",
];

/// `/api/v1/events/aggregate`: the event filters (but `class` and `limit`) and its own.
const AGGREGATE_PARAMS: [&str; 13] = [
    "site",
    "device",
    "camera",
    "kind",
    "event_type",
    "zone",
    "category",
    "phase",
    "town",
    "from",
    "to",
    "bucket",
    "by",
];

const TELEMETRY_PARAMS: [&str; 7] = ["site", "device", "source", "metric", "from", "to", "limit"];

const QUARANTINE_PARAMS: [&str; 6] = ["reason", "site", "device", "from", "to", "limit"];

/// Why one query parameter was not taken.
enum ParamError {
    Unknown,
    Bad(String),
}

impl<E: std::fmt::Display> From<E> for ParamError {
    fn from(e: E) -> Self {
        ParamError::Bad(e.to_string())
    }
}

/// Feeds each query pair to `set`, turning its refusal into a 400 that names the parameter;
/// a repeated or unknown name (listing `known`) is refused too. Shared by the history queries
/// so they take and refuse parameters alike.
fn parse_params(
    pairs: &[(String, String)],
    known: &[&str],
    mut set: impl FnMut(&str, &str) -> Result<(), ParamError>,
) -> Result<(), ApiError> {
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in pairs {
        let name = k.as_str();
        match set(name, v) {
            Ok(()) => {}
            Err(ParamError::Unknown) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}` (known: {})",
                    clip(name),
                    known.join(", ")
                )))
            }
            Err(ParamError::Bad(e)) => {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{name}`: {e}"
                )))
            }
        }
        if seen.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` given more than once"
            )));
        }
        seen.push(name);
    }
    Ok(())
}

/// A topic level (site, device, camera, sensor …): the same rules as on the wire, so a value
/// that could never be stored is refused rather than silently matching nothing.
fn level_param(what: &'static str, v: &str) -> Result<Option<String>, ParamError> {
    csb_wire::topic::validate_level(what, v)?;
    Ok(Some(v.to_string()))
}

fn time_param(v: &str) -> Result<Option<i64>, ParamError> {
    Ok(Some(parse_time_ms(v)?))
}

fn limit_param(v: &str) -> Result<usize, ParamError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ParamError::Bad(format!(
                "`{}` is not a number in 1..={MAX_LIMIT} (default {DEFAULT_LIMIT})",
                v.chars().take(32).collect::<String>()
            ))
        })
}

/// An empty range is a client mistake worth naming, not an empty answer.
fn check_time_range(from_ms: Option<i64>, to_ms: Option<i64>) -> Result<(), ApiError> {
    match (from_ms, to_ms) {
        (Some(from), Some(to)) if from >= to => Err(ApiError::bad_request(
            "query parameter `from` must be earlier than `to` (`to` is exclusive)",
        )),
        _ => Ok(()),
    }
}

/// Turns query pairs into an [`EventQuery`]; every error names its parameter.
pub fn parse_event_query(pairs: &[(String, String)]) -> Result<EventQuery, ApiError> {
    parse_event_query_in(pairs, None)
}

/// Sets one event filter parameter shared by event queries and aggregates; `false` when
/// `name` is not one of them. `town` needs the county model (its cameras are the filter).
fn event_filter_param(
    q: &mut EventQuery,
    county: Option<&crate::platform::county::County>,
    name: &str,
    v: &str,
) -> Result<bool, ParamError> {
    let short = |what: &str| -> Result<Option<String>, ParamError> {
        if v.is_empty() || v.len() > 64 {
            return Err(format!("must be {what} of 1..=64 bytes").into());
        }
        Ok(Some(v.to_string()))
    };
    match name {
        "site" => q.site = level_param("site", v)?,
        "device" => q.device = level_param("device", v)?,
        "camera" => q.camera = level_param("camera", v)?,
        "kind" => {
            q.kind = Some(match v {
                "detection" => EventKind::Detection,
                "rule" => EventKind::Rule,
                _ => return Err(format!("`{}` is not `detection` or `rule`", clip(v)).into()),
            });
        }
        "event_type" => q.event_type = short("a rule event type")?,
        "zone" => q.zone = short("a zone id")?,
        "category" => q.category = short("a category code")?,
        "phase" => {
            q.phase = Some(match v {
                "start" => csb_wire::Phase::Start,
                "update" => csb_wire::Phase::Update,
                "end" => csb_wire::Phase::End,
                "instant" => csb_wire::Phase::Instant,
                _ => {
                    return Err(
                        format!("`{}` is not one of start, update, end, instant", clip(v)).into(),
                    )
                }
            });
        }
        "town" => {
            let Some(c) = county else {
                return Err("needs the county model (the hub runs without one)".into());
            };
            if !c.towns.iter().any(|t| t.props.id == v) {
                return Err(format!("`{}` is not a town of the county model", clip(v)).into());
            }
            q.cameras = Some(
                c.cameras
                    .iter()
                    .filter(|cam| cam.placed.town.as_deref() == Some(v))
                    .map(|cam| cam.id.clone())
                    .collect(),
            );
        }
        "from" => q.from_ms = time_param(v)?,
        "to" => q.to_ms = time_param(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_event_query_in(
    pairs: &[(String, String)],
    county: Option<&crate::platform::county::County>,
) -> Result<EventQuery, ApiError> {
    let mut q = EventQuery::default();
    parse_params(pairs, &EVENT_PARAMS, |name, v| {
        if event_filter_param(&mut q, county, name, v)? {
            return Ok(());
        }
        match name {
            "class" => {
                if v.is_empty() || v.len() > 64 {
                    return Err("must be a label or class id of 1..=64 bytes".into());
                }
                q.class = Some(ClassFilter::parse(v));
            }
            "limit" => q.limit = limit_param(v)?,
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    check_time_range(q.from_ms, q.to_ms)?;
    Ok(q)
}

/// A grouping of `/api/v1/events/aggregate`: a stored dimension, or the camera's town.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    Dim(EventDim),
    Town,
}

/// `bucket`: `1m`, `15m`, `1h`, `1d` style (s, m, h, d), at least a minute.
fn bucket_param(v: &str) -> Result<i64, ParamError> {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let unit_ms = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err("must be a number and a unit s, m, h or d, e.g. 1h".into()),
    };
    let ms = n
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| *ms >= 60_000)
        .ok_or("must be at least 1m (a number and a unit s, m, h or d)")?;
    Ok(ms)
}

fn parse_aggregate_query(
    pairs: &[(String, String)],
    county: Option<&crate::platform::county::County>,
    now_ms: i64,
) -> Result<(EventAggregateQuery, Vec<GroupBy>), ApiError> {
    let mut filter = EventQuery::default();
    let (mut bucket_ms, mut by) = (None, Vec::new());
    parse_params(pairs, &AGGREGATE_PARAMS, |name, v| {
        if event_filter_param(&mut filter, county, name, v)? {
            return Ok(());
        }
        match name {
            "bucket" => bucket_ms = Some(bucket_param(v)?),
            "by" => {
                for d in v.split(',').filter(|d| !d.is_empty()) {
                    let g = match d {
                        "town" if county.is_none() => {
                            return Err("`town` needs the county model".into())
                        }
                        "town" => GroupBy::Town,
                        _ => GroupBy::Dim(
                            EventDim::ALL
                                .into_iter()
                                .find(|x| x.name() == d)
                                .ok_or_else(|| {
                                    format!(
                                        "`{}` is not one of town, site, device, camera, kind, \
                                         event_type, zone, category, phase",
                                        clip(d)
                                    )
                                })?,
                        ),
                    };
                    if !by.contains(&g) {
                        by.push(g);
                    }
                }
                if by.len() > 3 {
                    return Err("at most 3 dimensions".into());
                }
            }
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    let to_ms = filter.to_ms.unwrap_or(now_ms);
    let from_ms = filter.from_ms.unwrap_or(to_ms - 86_400_000);
    check_time_range(Some(from_ms), Some(to_ms))?;
    if let Some(b) = bucket_ms {
        if (to_ms - from_ms) / b > MAX_BUCKETS {
            return Err(ApiError::bad_request(format!(
                "bucket: {} buckets between from and to, at most {} (a larger bucket or a \
                 shorter range)",
                (to_ms - from_ms) / b,
                MAX_BUCKETS
            )));
        }
    }
    // The store groups by stored dimensions; a town comes from the camera.
    let mut dims: Vec<EventDim> = by
        .iter()
        .filter_map(|g| match g {
            GroupBy::Dim(d) => Some(*d),
            GroupBy::Town => None,
        })
        .collect();
    if by.contains(&GroupBy::Town) {
        dims.extend([EventDim::Site, EventDim::Device, EventDim::Camera]);
    }
    Ok((
        EventAggregateQuery {
            filter,
            from_ms,
            to_ms,
            bucket_ms,
            by: dims,
        },
        by,
    ))
}

/// Regroups a store aggregate grouped by stored dimensions (+ site, device, camera when
/// `by` has `town`) into `by`'s order, the town from the county model's cameras.
fn regroup(
    agg: EventAggregate,
    by: &[GroupBy],
    county: Option<&crate::platform::county::County>,
) -> EventAggregate {
    if !by.contains(&GroupBy::Town) {
        return agg;
    }
    let n_dims = by.len() - 1;
    let town_of = |site: &str, device: &str, camera: &str| -> String {
        let id = format!("{site}/{device}/{camera}");
        county
            .and_then(|c| c.cameras.iter().find(|cam| cam.id == id))
            .and_then(|cam| cam.placed.town.clone())
            .unwrap_or_default()
    };
    let mut merged: std::collections::BTreeMap<
        Vec<String>,
        (u64, std::collections::BTreeMap<i64, u64>),
    > = Default::default();
    for g in agg.groups {
        let (dims, src) = g.key.split_at(n_dims.min(g.key.len()));
        let town = match src {
            [site, device, camera] => town_of(site, device, camera),
            _ => String::new(),
        };
        let mut dims = dims.iter();
        let key: Vec<String> = by
            .iter()
            .map(|b| match b {
                GroupBy::Town => town.clone(),
                GroupBy::Dim(_) => dims.next().cloned().unwrap_or_default(),
            })
            .collect();
        let e = merged.entry(key).or_default();
        e.0 += g.total;
        for (t, c) in g.buckets {
            *e.1.entry(t).or_default() += c;
        }
    }
    let mut groups: Vec<AggregateGroup> = merged
        .into_iter()
        .map(|(key, (total, b))| AggregateGroup {
            key,
            total,
            buckets: b.into_iter().collect(),
        })
        .collect();
    groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
    EventAggregate {
        total: agg.total,
        groups,
    }
}

/// Event counts grouped by dimensions and time bucket: what the cockpit's charts are made of.
/// `from` defaults to `to` − 24 h, `to` to now; `by` a comma list (≤ 3) of town, site,
/// device, camera, kind, event_type, zone, category, phase; `bucket` e.g. `1h`.
async fn events_aggregate<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let now_ms = csb_wire::now_ms();
    let county = st.county.as_deref();
    let (q, by) = parse_aggregate_query(&pairs, county, now_ms)?;
    let (from_ms, to_ms, bucket_ms) = (q.from_ms, q.to_ms, q.bucket_ms);
    let agg = store_call(
        &st.store_slots,
        "event aggregate",
        st.store.aggregate_events(q),
    )
    .await?;
    let agg = regroup(agg, &by, county);
    let names: Vec<&str> = by
        .iter()
        .map(|b| match b {
            GroupBy::Town => "town",
            GroupBy::Dim(d) => d.name(),
        })
        .collect();
    Ok(Json(json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "bucket_ms": bucket_ms,
        "by": names,
        "total": agg.total,
        "groups": agg.groups,
    })))
}

/// Turns query pairs into a [`TelemetryQuery`]; every error names its parameter.
pub fn parse_telemetry_query(pairs: &[(String, String)]) -> Result<TelemetryQuery, ApiError> {
    let mut q = TelemetryQuery::default();
    parse_params(pairs, &TELEMETRY_PARAMS, |name, v| {
        match name {
            "site" => q.site = level_param("site", v)?,
            "device" => q.device = level_param("device", v)?,
            // Sensor id, camera id or `agent`: a topic level on the wire.
            "source" => q.source = level_param("source", v)?,
            "metric" => {
                // The wire's bound on metric names, so no stored name is unreachable.
                if v.is_empty() || v.len() > 128 {
                    return Err("must be a metric name of 1..=128 bytes".into());
                }
                q.metric = Some(v.to_string());
            }
            "from" => q.from_ms = time_param(v)?,
            "to" => q.to_ms = time_param(v)?,
            "limit" => q.limit = limit_param(v)?,
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    check_time_range(q.from_ms, q.to_ms)?;
    Ok(q)
}

/// Turns query pairs into a [`QuarantineQuery`]; every error names its parameter.
pub fn parse_quarantine_query(pairs: &[(String, String)]) -> Result<QuarantineQuery, ApiError> {
    let mut q = QuarantineQuery::default();
    parse_params(pairs, &QUARANTINE_PARAMS, |name, v| {
        match name {
            "reason" => {
                q.reason = Some(RejectReason::parse(v).ok_or_else(|| {
                    let known: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
                    format!("`{}` is not one of {}", clip(v), known.join(", "))
                })?);
            }
            "site" => q.site = level_param("site", v)?,
            "device" => q.device = level_param("device", v)?,
            "from" => q.from_ms = time_param(v)?,
            "to" => q.to_ms = time_param(v)?,
            "limit" => q.limit = limit_param(v)?,
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    check_time_range(q.from_ms, q.to_ms)?;
    Ok(q)
}

async fn events<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<EventsBody>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let q = parse_event_query_in(&pairs, st.county.as_deref())?;
    let page = store_call(&st.store_slots, "event query", st.store.query_events(q)).await?;
    Ok(Json(EventsBody {
        count: page.events.len(),
        truncated: page.truncated,
        events: page.events,
    }))
}

async fn telemetry<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TelemetryBody>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let q = parse_telemetry_query(&pairs)?;
    let page = store_call(
        &st.store_slots,
        "telemetry query",
        st.store.query_telemetry(q),
    )
    .await?;
    Ok(Json(TelemetryBody {
        count: page.telemetry.len(),
        truncated: page.truncated,
        telemetry: page.telemetry,
    }))
}

async fn quarantine<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<QuarantineBody>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let q = parse_quarantine_query(&pairs)?;
    let page = store_call(
        &st.store_slots,
        "quarantine query",
        st.store.query_quarantine(q),
    )
    .await?;
    Ok(Json(QuarantineBody {
        count: page.entries.len(),
        truncated: page.truncated,
        quarantine: page.entries,
    }))
}

async fn event_by_id<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<csb_wire::Event>, ApiError> {
    let id = parse_id("event id", path)?;
    // Json of the wire type, not `json!`: keeps the short f32 form (see `EventsBody`).
    store_call(&st.store_slots, "event lookup", st.store.event(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))
}

/// The evidence JPEG of a rule event. 404 names which link is missing: the event, its snapshot
/// reference, or the snapshot itself (uploaded separately, so it may not have arrived yet).
async fn event_snapshot<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id("event id", path)?;
    let event = store_call(&st.store_slots, "event lookup", st.store.event(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))?;
    let Some(reference) = event.rule.as_ref().and_then(|r| r.snapshot.as_deref()) else {
        return Err(ApiError::not_found(format!(
            "event {id} has no evidence snapshot (only rule events with `rule.snapshot` have one)"
        )));
    };
    let snap_id = Ulid::from_string(reference).map_err(|_| {
        ApiError::not_found(format!(
            "event {id} names snapshot `{}`, which is not a valid snapshot id",
            clip(reference)
        ))
    })?;
    let snap = store_call(
        &st.store_slots,
        "snapshot lookup",
        st.store.snapshot(snap_id),
    )
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "snapshot {snap_id} of event {id} has not arrived yet \
                 (the edge agent uploads it separately; retry later)"
        ))
    })?;
    if (snap.meta.site.as_str(), snap.meta.device.as_str())
        != (event.site.as_str(), event.device.as_str())
    {
        // Another device must not be able to supply a device's evidence.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "snapshot {snap_id} was uploaded by {}/{}, not by event {id}'s device {}/{}",
                snap.meta.site, snap.meta.device, event.site, event.device
            ),
        ));
    }
    Ok(jpeg_response(&st.metrics, snap))
}

async fn get_snapshot<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id("snapshot id", path)?;
    let snap = store_call(&st.store_slots, "snapshot lookup", st.store.snapshot(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no snapshot with id {id}")))?;
    Ok(jpeg_response(&st.metrics, snap))
}

fn jpeg_response(metrics: &Metrics, snap: Snapshot) -> Response {
    metrics.add_snapshot_served();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(SNAPSHOT_CACHE_CONTROL),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let device = format!("{}/{}", snap.meta.site, snap.meta.device);
    if let Ok(v) = HeaderValue::from_str(&device) {
        headers.insert(HeaderName::from_static(DEVICE_HEADER), v);
    }
    if let Some(event) = snap.meta.event {
        if let Ok(v) = HeaderValue::from_str(&event.to_string()) {
            headers.insert(HeaderName::from_static(EVENT_HEADER), v);
        }
    }
    (headers, snap.bytes).into_response()
}

/// `PUT /api/v1/snapshots/{id}`: stores an evidence JPEG, durably, before answering.
///
/// Headers: `X-Csb-Device: {site}/{device}` (required), `X-Csb-Event: {ulid}` (optional),
/// `Content-Type: image/jpeg` (another type is refused; none is tolerated). The body must be
/// 1..=`snapshot_max_bytes` bytes starting with the JPEG magic FF D8 FF.
///
/// 201 Created when stored; 200 when the same bytes are already stored under the id (a retry
/// after a lost answer is normal); 409 when different bytes are; 400/413/415 naming the
/// problem otherwise. The id, headers and declared length are checked before the body is
/// read (see `drain_refused` for what happens to it then).
///
/// With `[auth] http = "required"` the upload must also carry `X-Csb-Signature`
/// ([`csb_wire::sign::sign_upload`]) made with the key of the device `X-Csb-Device` names, which
/// must have credentials in devices.json (whatever `auth.devices` says); else 401, counted,
/// nothing stored. The signature is checked before the body is looked at.
pub async fn put_snapshot<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let metrics = &st.metrics;
    let refuse = |reason: UploadReject, e: ApiError| {
        metrics.reject_upload(reason);
        e
    };
    let max = st.snapshot_max_bytes;
    let too_large = |what: String| {
        refuse(
            UploadReject::TooLarge,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("snapshot {what} exceeds snapshot_max_bytes = {max}"),
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Owned: refusals also happen after the request has been consumed for its body.
    let (method, uri_path) = (req.method().clone(), req.uri().path().to_string());
    let uploader = req
        .headers()
        .get(DEVICE_HEADER)
        .map(|v| clip(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_default();
    let refuse_auth = |(reason, e): (HttpAuthRefusal, ApiError)| {
        metrics.refuse_http(reason);
        if let Some(a) = &st.access {
            a.log_refusal(&method, &uri_path, reason, &uploader);
        }
        e
    };
    let precheck = || {
        // As sent (the signature covers it), before parsing.
        let raw_id = path.as_ref().map(|Path(p)| p.clone()).unwrap_or_default();
        let id = parse_id("snapshot id", path).map_err(|e| refuse(UploadReject::BadId, e))?;
        let (site, device, event) =
            upload_headers(req.headers()).map_err(|(reason, e)| refuse(reason, e))?;
        let signed = match &st.access {
            Some(a) => Some(
                upload_credentials(a, req.headers(), raw_id, &site, &device)
                    .map_err(refuse_auth)?,
            ),
            None => None,
        };
        if let Some(len) = declared.filter(|len| *len > max as u64) {
            return Err(too_large(format!("of {len} bytes")));
        }
        Ok((id, site, device, event, signed))
    };
    let (id, site, device, event, signed) = match precheck() {
        Ok(t) => t,
        Err(e) => {
            drain_refused(req.into_body(), declared, max).await;
            return Err(e);
        }
    };
    // Reads at most `max` bytes (the route's DefaultBodyLimit).
    let body = match Bytes::from_request(req, &()).await {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(too_large("body".into()))
        }
        Err(e) => {
            return Err(refuse(
                UploadReject::Body,
                ApiError::new(
                    e.status(),
                    format!("cannot read the request body: {}", e.body_text()),
                ),
            ))
        }
    };
    if let Some(u) = &signed {
        verify_upload(&u.key, &u.id, &u.device, &u.event, &body, &u.signature).map_err(|_| {
            refuse_auth((
                HttpAuthRefusal::UploadBadSignature,
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "header `X-Csb-Signature` is not {}'s signature of this upload \
                         (wrong secret, or the id, headers or body changed after signing)",
                        u.device
                    ),
                )
                .with_challenge(CHALLENGE_SIGNATURE),
            ))
        })?;
    }
    if body.is_empty() {
        return Err(refuse(
            UploadReject::Empty,
            ApiError::bad_request("empty body: PUT the JPEG bytes"),
        ));
    }
    if !body.starts_with(&JPEG_MAGIC) {
        let head: Vec<String> = body.iter().take(4).map(|b| format!("{b:02X}")).collect();
        return Err(refuse(
            UploadReject::NotJpeg,
            ApiError::bad_request(format!(
                "body is not a JPEG: it starts with {} instead of FF D8 FF",
                head.join(" ")
            )),
        ));
    }
    let len = body.len();
    let snapshot = NewSnapshot {
        id,
        site,
        device,
        event,
        received_ms: csb_wire::now_ms(),
        bytes: Vec::from(body),
    };
    let outcome = store_call(
        &st.store_slots,
        "snapshot upload",
        st.store.put_snapshot(snapshot),
    )
    .await
    .inspect_err(|_| metrics.add_snapshot_store_failed())?;
    let location = format!("/api/v1/snapshots/{id}");
    match outcome {
        PutSnapshot::Created => {
            metrics.add_snapshot_stored(len as u64);
            tracing::debug!(%id, bytes = len, "snapshot stored");
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location.clone())],
                Json(json!({ "id": id.to_string(), "bytes": len, "url": location })),
            )
                .into_response())
        }
        PutSnapshot::Identical => {
            metrics.add_snapshot_identical();
            Ok(Json(json!({
                "id": id.to_string(),
                "bytes": len,
                "url": location,
                "note": "already stored with the same content",
            }))
            .into_response())
        }
        PutSnapshot::Conflict { stored_len } => Err(refuse(
            UploadReject::Conflict,
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "snapshot {id} already exists with different content ({stored_len} bytes \
                     stored, {len} uploaded); snapshots are immutable, upload under a new id"
                ),
            ),
        )),
    }
}

/// How much of a refused upload is read and discarded, as a multiple of `snapshot_max_bytes`.
const DRAIN_FACTOR: u64 = 4;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and discards (never buffers) the body of an upload refused before reading it, when it
/// is at most `DRAIN_FACTOR` × `max` bytes. hyper closes a connection whose request body was
/// left unread; a client still sending then gets "broken pipe" or a reset instead of the
/// refusal, and would retry an upload that can never succeed. Bigger (or slower) bodies are
/// not worth the bandwidth: their connection is closed.
async fn drain_refused(mut body: axum::body::Body, declared: Option<u64>, max: usize) {
    use axum::body::HttpBody;
    let cap = DRAIN_FACTOR.saturating_mul(max as u64);
    if declared.is_some_and(|len| len > cap) {
        return;
    }
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while seen <= cap {
            match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    })
    .await;
}

/// What an upload's signature is checked against once its body is read.
struct SignedUpload {
    key: SigningKey,
    /// The signed strings, exactly as sent.
    id: String,
    device: String,
    event: String,
    signature: String,
}

/// The uploading device's key and the request's signature, before the body is read: an
/// unsigned upload or an unknown device is refused without reading the body.
fn upload_credentials(
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

/// Site, device and optional event id from an upload's headers, after checking its
/// Content-Type.
fn upload_headers(
    headers: &HeaderMap,
) -> Result<(String, String, Option<Ulid>), (UploadReject, ApiError)> {
    let bad = |reason, message: String| (reason, ApiError::bad_request(message));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let mime = ct.to_str().unwrap_or("").split(';').next().unwrap_or("");
        if !mime.trim().eq_ignore_ascii_case("image/jpeg") {
            return Err((
                UploadReject::ContentType,
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "header `Content-Type` must be image/jpeg, not `{}`",
                        clip(&String::from_utf8_lossy(ct.as_bytes()))
                    ),
                ),
            ));
        }
    }
    let Some(value) = headers.get(DEVICE_HEADER) else {
        return Err(bad(
            UploadReject::BadHeader,
            "header `X-Csb-Device: {site}/{device}` is required".into(),
        ));
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let Some((site, device)) = value.split_once('/') else {
        return Err(bad(
            UploadReject::BadHeader,
            format!(
                "header `X-Csb-Device` must be `{{site}}/{{device}}`, not `{}`",
                clip(&value)
            ),
        ));
    };
    for (what, level) in [("site", site), ("device", device)] {
        csb_wire::topic::validate_level(what, level).map_err(|e| {
            bad(
                UploadReject::BadHeader,
                format!("header `X-Csb-Device`: {e}"),
            )
        })?;
    }
    let event = match headers.get(EVENT_HEADER) {
        None => None,
        Some(v) => {
            let v = String::from_utf8_lossy(v.as_bytes());
            Some(Ulid::from_string(v.trim()).map_err(|e| {
                bad(
                    UploadReject::BadHeader,
                    format!("header `X-Csb-Event` `{}` is not a ULID: {e}", clip(&v)),
                )
            })?)
        }
    };
    Ok((site.to_string(), device.to_string(), event))
}

/// Serialised straight from the wire types (not through `json!`), so f32 scores and boxes keep
/// their short form (`0.86`, not `0.8600000143051147`).
#[derive(serde::Serialize)]
struct EventsBody {
    events: Vec<csb_wire::Event>,
    count: usize,
    truncated: bool,
}

/// Same shape as [`EventsBody`]; each item is a whole wire message, all its metrics included.
#[derive(serde::Serialize)]
struct TelemetryBody {
    telemetry: Vec<csb_wire::Telemetry>,
    count: usize,
    truncated: bool,
}

/// Same envelope as [`EventsBody`].
#[derive(serde::Serialize)]
struct QuarantineBody {
    quarantine: Vec<QuarantineEntry>,
    count: usize,
    truncated: bool,
}

async fn devices<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let devices = store_call(&st.store_slots, "device list", st.store.devices()).await?;
    Ok(Json(json!({ "count": devices.len(), "devices": devices })))
}

/// The county model as loaded: the county, departments, towns, roads, zones (GeoJSON geometry
/// inline) and the device inventory. 404 when the hub runs without one.
async fn county<S: Store>(State(st): State<ApiState<S>>) -> Result<Response, ApiError> {
    match &st.county {
        Some(c) => Ok(Json(c.as_ref()).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no county model loaded (cloud-hub serve --county DIR, or county_dir in the config)",
        )),
    }
}

/// The 家底 inventory report ([`crate::platform::inventory`]): `format=json` (default) or `csv`,
/// `table=devices` (default) or `sources` for CSV, `stale_after_s` (default 300).
async fn inventory<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let (mut csv, mut sources, mut stale_after_ms) = (
        false,
        false,
        crate::platform::inventory::DEFAULT_STALE_AFTER_MS,
    );
    for (k, v) in &pairs {
        match (k.as_str(), v.as_str()) {
            ("format", "json") => csv = false,
            ("format", "csv") => csv = true,
            ("format", other) => {
                return Err(ApiError::bad_request(format!(
                    "format: `{other}` is not one of json, csv"
                )))
            }
            ("table", "devices") => sources = false,
            ("table", "sources") => sources = true,
            ("table", other) => {
                return Err(ApiError::bad_request(format!(
                    "table: `{other}` is not one of devices, sources"
                )))
            }
            ("stale_after_s", v) => {
                stale_after_ms = v
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| i64::from(s) * 1000)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "stale_after_s: `{v}` is not a whole number of seconds ≥ 1"
                        ))
                    })?
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}` (known: format, table, stale_after_s)"
                )))
            }
        }
    }
    let statuses = store_call(&st.store_slots, "device list", st.store.devices()).await?;
    let data = store_call(&st.store_slots, "source list", st.store.sources()).await?;
    let now_ms = csb_wire::now_ms();
    let inv = crate::platform::inventory::build(
        st.county.as_deref(),
        &statuses,
        &data,
        now_ms,
        stale_after_ms,
    );
    if !csv {
        return Ok(Json(inv).into_response());
    }
    let (body, name) = match sources {
        true => (inv.sources_csv(), "inventory-sources.csv"),
        false => (inv.devices_csv(), "inventory-devices.csv"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

async fn health<S: Store>(State(st): State<ApiState<S>>) -> Response {
    let ingest = st.metrics.snapshot();
    let evidence = st.metrics.evidence();
    // Why the hub is degraded, if it is: each reason names its part.
    let mut reasons = Vec::new();
    let (mut status, mut storage) =
        match store_call(&st.store_slots, "store stats", st.store.stats()).await {
            Ok(s) => {
                let mut v = json!(s);
                v["index_bytes"] = json!(st.store.index_bytes());
                (StatusCode::OK, v)
            }
            Err(e) => {
                reasons.push(format!("store: {}", e.message));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": e.message }),
                )
            }
        };
    // Writes that fail (a full disk) leave reads working: still unhealthy, as nothing new is
    // stored or acked.
    let store_health = st.store.health();
    if let (Some(obj), serde_json::Value::Object(h)) =
        (storage.as_object_mut(), json!(store_health))
    {
        obj.extend(h);
    }
    let store_reasons = store_health.reasons();
    if !store_reasons.is_empty() {
        status = StatusCode::SERVICE_UNAVAILABLE;
        reasons.extend(store_reasons);
    }
    // Devices that cannot get in make the hub unhealthy, whatever the store says.
    let broker = st.broker.as_ref().map(|b| b.snapshot());
    if let Some(b) = broker
        .as_ref()
        .filter(|b| !matches!(b.state, BrokerState::Ok | BrokerState::Starting))
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
        reasons.push(format!(
            "mqtt broker: {}{}",
            serde_json::to_value(b.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            b.last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "reasons": reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "mqtt_addr": st.mqtt_addr.to_string(),
        "ingest": ingest,
        "mqtt": st.metrics.mqtt(broker),
        "evidence": evidence,
        "http_auth": st.metrics.http_auth(),
        "storage": storage,
        "twin": st.twin.as_ref().map(|t| t.counters.to_json()),
    });
    (status, Json(body)).into_response()
}

async fn metrics<S: Store>(State(st): State<ApiState<S>>) -> Response {
    let stats = store_call(&st.store_slots, "store stats", st.store.stats())
        .await
        .ok();
    let mut text = render_prometheus(
        &st.metrics.snapshot(),
        &st.metrics.evidence(),
        &st.metrics.http_auth(),
        &st.metrics.mqtt(st.broker.as_ref().map(|b| b.snapshot())),
        stats.as_ref(),
        st.started.elapsed(),
    );
    text.push_str(&render_store_health(
        &st.store.health(),
        st.store.index_bytes(),
    ));
    if let Some(t) = &st.twin {
        text.push_str(&t.counters.render_prometheus());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint `{}`", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(q: &[(&str, &str)]) -> String {
        parse_event_query(&pairs(q)).unwrap_err().message
    }

    #[test]
    fn parses_all_parameters() {
        let q = parse_event_query(&pairs(&[
            ("site", "yuexi"),
            ("device", "gw-01"),
            ("camera", "cam-01"),
            ("class", "person"),
            ("kind", "rule"),
            ("event_type", "illegal_parking"),
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(q.site.as_deref(), Some("yuexi"));
        assert_eq!(q.device.as_deref(), Some("gw-01"));
        assert_eq!(q.camera.as_deref(), Some("cam-01"));
        assert_eq!(q.class, Some(ClassFilter::parse("person")));
        assert_eq!(q.kind, Some(EventKind::Rule));
        assert_eq!(q.event_type.as_deref(), Some("illegal_parking"));
        assert_eq!(q.from_ms, Some(1_789_979_400_000));
        assert_eq!(q.to_ms, Some(1_789_979_500_000));
        assert_eq!(q.limit, 5);
        assert_eq!(parse_event_query(&[]).unwrap(), EventQuery::default());
    }

    #[test]
    fn errors_name_the_parameter() {
        assert!(err(&[("limit", "0")]).contains("`limit`"));
        assert!(err(&[("limit", "1001")]).contains("`limit`"));
        assert!(err(&[("limit", "x")]).contains("`limit`"));
        assert!(err(&[("from", "yesterday")]).contains("`from`"));
        assert!(err(&[("to", "2026-13-01T00:00:00Z")]).contains("`to`"));
        assert!(err(&[("device", "a b")]).contains("`device`"));
        assert!(err(&[("class", "")]).contains("`class`"));
        assert!(err(&[("kind", "Rule")]).contains("`kind`"));
        assert!(err(&[("event_type", "")]).contains("`event_type`"));
        assert!(err(&[("devcie", "x")]).contains("`devcie`"));
        assert!(err(&[("limit", "1"), ("limit", "2")]).contains("more than once"));
        assert!(err(&[("from", "2000"), ("to", "1000")]).contains("`from`"));
    }

    fn tel_err(q: &[(&str, &str)]) -> String {
        parse_telemetry_query(&pairs(q)).unwrap_err().message
    }

    #[test]
    fn parses_telemetry_parameters() {
        let q = parse_telemetry_query(&pairs(&[
            ("site", "yuexi"),
            ("device", "gw-01"),
            ("source", "wl-01"),
            ("metric", "cam-01.fps"),
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            TelemetryQuery {
                site: Some("yuexi".into()),
                device: Some("gw-01".into()),
                source: Some("wl-01".into()),
                metric: Some("cam-01.fps".into()),
                from_ms: Some(1_789_979_400_000),
                to_ms: Some(1_789_979_500_000),
                limit: 5,
            }
        );
        assert_eq!(
            parse_telemetry_query(&[]).unwrap(),
            TelemetryQuery::default()
        );
    }

    #[test]
    fn telemetry_errors_name_the_parameter() {
        assert!(tel_err(&[("limit", "0")]).contains("`limit`"));
        assert!(tel_err(&[("limit", "1001")]).contains("`limit`"));
        assert!(tel_err(&[("from", "yesterday")]).contains("`from`"));
        assert!(tel_err(&[("to", "2026-13-01T00:00:00Z")]).contains("`to`"));
        assert!(tel_err(&[("site", "")]).contains("`site`"));
        assert!(tel_err(&[("device", "a/b")]).contains("`device`"));
        assert!(tel_err(&[("source", "a b")]).contains("`source`"));
        assert!(tel_err(&[("metric", "")]).contains("`metric`"));
        assert!(tel_err(&[("metric", &"m".repeat(129))]).contains("`metric`"));
        // Event-only parameters are unknown here, and the message lists the known ones.
        let e = tel_err(&[("camera", "cam-01")]);
        assert!(
            e.contains("`camera`") && e.contains("source, metric"),
            "{e}"
        );
        assert!(tel_err(&[("source", "a"), ("source", "b")]).contains("more than once"));
        assert!(tel_err(&[("from", "2000"), ("to", "2000")]).contains("`from`"));
    }
}

#[cfg(test)]
mod quarantine_query_tests {
    use super::tests::pairs;
    use super::*;

    fn err(q: &[(&str, &str)]) -> String {
        parse_quarantine_query(&pairs(q)).unwrap_err().message
    }

    #[test]
    fn parses_quarantine_parameters() {
        let q = parse_quarantine_query(&pairs(&[
            ("reason", "device_mismatch"),
            ("site", "yuexi"),
            ("device", "gw-01"),
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "7"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            QuarantineQuery {
                reason: Some(RejectReason::DeviceMismatch),
                site: Some("yuexi".into()),
                device: Some("gw-01".into()),
                from_ms: Some(1_789_979_400_000),
                to_ms: Some(1_789_979_500_000),
                limit: 7,
            }
        );
        assert_eq!(
            parse_quarantine_query(&[]).unwrap(),
            QuarantineQuery::default()
        );
        for r in RejectReason::ALL {
            let q = parse_quarantine_query(&pairs(&[("reason", r.as_str())])).unwrap();
            assert_eq!(q.reason, Some(r));
        }
    }

    #[test]
    fn quarantine_errors_name_the_parameter() {
        let e = err(&[("reason", "json")]);
        assert!(e.contains("`reason`") && e.contains("not_json"), "{e}");
        assert!(err(&[("device", "a b")]).contains("`device`"));
        assert!(err(&[("site", "")]).contains("`site`"));
        assert!(err(&[("from", "soon")]).contains("`from`"));
        assert!(err(&[("to", "x")]).contains("`to`"));
        assert!(err(&[("limit", "0")]).contains("`limit`"));
        assert!(err(&[("limit", "1001")]).contains("`limit`"));
        assert!(err(&[("camera", "cam-01")]).contains("`camera`"));
        assert!(err(&[("reason", "schema"), ("reason", "version")]).contains("more than once"));
        assert!(err(&[("from", "2000"), ("to", "1000")]).contains("`from`"));
    }
}

#[cfg(test)]
mod upload_header_tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upload_headers_parse_and_name_the_problem() {
        let event = Ulid::new();
        let (site, device, ev) = upload_headers(&headers(&[
            ("content-type", "image/jpeg"),
            ("x-csb-device", "yuexi/gw-01"),
            ("x-csb-event", &event.to_string()),
        ]))
        .unwrap();
        assert_eq!(
            (site.as_str(), device.as_str(), ev),
            ("yuexi", "gw-01", Some(event))
        );
        // No Content-Type and no event are fine.
        let (_, _, ev) = upload_headers(&headers(&[("x-csb-device", "yuexi/gw-01")])).unwrap();
        assert_eq!(ev, None);

        let fail = |pairs: &[(&'static str, &str)]| upload_headers(&headers(pairs)).unwrap_err();
        let (r, e) = fail(&[("content-type", "image/png"), ("x-csb-device", "a/b")]);
        assert_eq!(r, UploadReject::ContentType);
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        for (pairs, needle) in [
            (vec![], "X-Csb-Device"),
            (vec![("x-csb-device", "yuexi")], "X-Csb-Device"),
            (vec![("x-csb-device", "yuexi/gw 01")], "device"),
            (vec![("x-csb-device", "yuexi/gw-01/x")], "device"),
            (vec![("x-csb-device", "/gw-01")], "site"),
            (
                vec![("x-csb-device", "yuexi/gw-01"), ("x-csb-event", "nope")],
                "X-Csb-Event",
            ),
        ] {
            let (r, e) = fail(&pairs);
            assert_eq!(r, UploadReject::BadHeader, "{pairs:?}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{pairs:?}: {}", e.message);
        }
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn policy_table() {
        let a = |m: Method, p: &str| access_for(&m, p);
        assert_eq!(a(Method::GET, "/api/v1/health"), Access::Open);
        assert_eq!(a(Method::HEAD, "/api/v1/health"), Access::Open);
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
            "/nonesuch",
        ] {
            assert_eq!(a(Method::GET, p), Access::Role(Role::Viewer), "{p}");
            assert_eq!(a(Method::DELETE, p), Access::Role(Role::Operator), "{p}");
        }
        assert_eq!(
            a(Method::GET, "/api/v1/admin/tokens"),
            Access::Role(Role::Admin)
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
