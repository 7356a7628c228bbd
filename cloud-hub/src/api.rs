//! REST API (axum). Read-only views of the store plus health and Prometheus metrics.
//!
//! - `GET /api/v1/events?site=&device=&camera=&class=&from=&to=&limit=` — newest first
//! - `GET /api/v1/devices` — latest status per device
//! - `GET /api/v1/health` — liveness, ingest counters, store sizes
//! - `GET /metrics` — Prometheus text
//!
//! Errors are JSON `{"error": "..."}` naming the parameter at fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::metrics::{render_prometheus, Metrics};
use crate::store::{ClassFilter, EventQuery, Store, StoreError, DEFAULT_LIMIT, MAX_LIMIT};
use crate::timeparse::parse_time_ms;

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
}

impl<S> ApiState<S> {
    pub fn new(
        store: Arc<S>,
        metrics: Arc<Metrics>,
        started: Instant,
        mqtt_addr: SocketAddr,
    ) -> Self {
        ApiState {
            store,
            metrics,
            started,
            mqtt_addr,
            store_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_STORE_CALLS)),
        }
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
        }
    }
}

pub fn router<S: Store>(state: ApiState<S>) -> Router {
    Router::new()
        .route("/api/v1/events", get(events::<S>))
        .route("/api/v1/devices", get(devices::<S>))
        .route("/api/v1/health", get(health::<S>))
        .route("/metrics", get(metrics::<S>))
        .fallback(not_found)
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error serving request");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("storage error: {e}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
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
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("too many concurrent requests; retry {what} shortly"),
        });
    };
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::warn!(what, "store call timed out");
            Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("{what} took longer than {STORE_TIMEOUT:?}; narrow the query"),
            })
        }
    }
}

const EVENT_PARAMS: [&str; 7] = ["site", "device", "camera", "class", "from", "to", "limit"];

/// Turns query pairs into an [`EventQuery`]; every error names its parameter.
pub fn parse_event_query(pairs: &[(String, String)]) -> Result<EventQuery, ApiError> {
    let mut q = EventQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in pairs {
        let name = k.as_str();
        let param_err = |e: &dyn std::fmt::Display| {
            ApiError::bad_request(format!("query parameter `{name}`: {e}"))
        };
        let level = |what: &'static str| {
            csb_wire::topic::validate_level(what, v)
                .map(|()| Some(v.clone()))
                .map_err(|e| param_err(&e))
        };
        match name {
            "site" => q.site = level("site")?,
            "device" => q.device = level("device")?,
            "camera" => q.camera = level("camera")?,
            "class" => {
                if v.is_empty() || v.len() > 64 {
                    return Err(param_err(&"must be a label or class id of 1..=64 bytes"));
                }
                q.class = Some(ClassFilter::parse(v));
            }
            "from" => q.from_ms = Some(parse_time_ms(v).map_err(|e| param_err(&e))?),
            "to" => q.to_ms = Some(parse_time_ms(v).map_err(|e| param_err(&e))?),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        param_err(&format!(
                            "`{}` is not a number in 1..={MAX_LIMIT} (default {DEFAULT_LIMIT})",
                            v.chars().take(32).collect::<String>()
                        ))
                    })?;
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}` (known: {})",
                    name.chars().take(64).collect::<String>(),
                    EVENT_PARAMS.join(", ")
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
    if let (Some(from), Some(to)) = (q.from_ms, q.to_ms) {
        if from >= to {
            return Err(ApiError::bad_request(
                "query parameter `from` must be earlier than `to` (`to` is exclusive)",
            ));
        }
    }
    Ok(q)
}

async fn events<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<EventsBody>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let q = parse_event_query(&pairs)?;
    let page = store_call(&st.store_slots, "event query", st.store.query_events(q)).await?;
    Ok(Json(EventsBody {
        count: page.events.len(),
        truncated: page.truncated,
        events: page.events,
    }))
}

/// Serialised straight from the wire types (not through `json!`), so f32 scores and boxes keep
/// their short form (`0.86`, not `0.8600000143051147`).
#[derive(serde::Serialize)]
struct EventsBody {
    events: Vec<csb_wire::Event>,
    count: usize,
    truncated: bool,
}

async fn devices<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let devices = store_call(&st.store_slots, "device list", st.store.devices()).await?;
    Ok(Json(json!({ "count": devices.len(), "devices": devices })))
}

async fn health<S: Store>(State(st): State<ApiState<S>>) -> Response {
    let ingest = st.metrics.snapshot();
    let (status, storage) = match store_call(&st.store_slots, "store stats", st.store.stats()).await
    {
        Ok(s) => (StatusCode::OK, json!(s)),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": e.message }),
        ),
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "mqtt_addr": st.mqtt_addr.to_string(),
        "ingest": ingest,
        "storage": storage,
    });
    (status, Json(body)).into_response()
}

async fn metrics<S: Store>(State(st): State<ApiState<S>>) -> Response {
    let stats = store_call(&st.store_slots, "store stats", st.store.stats())
        .await
        .ok();
    let text = render_prometheus(&st.metrics.snapshot(), stats.as_ref(), st.started.elapsed());
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
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such endpoint `{}`", uri.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
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
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(q.site.as_deref(), Some("yuexi"));
        assert_eq!(q.device.as_deref(), Some("gw-01"));
        assert_eq!(q.camera.as_deref(), Some("cam-01"));
        assert_eq!(q.class, Some(ClassFilter::parse("person")));
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
        assert!(err(&[("devcie", "x")]).contains("`devcie`"));
        assert!(err(&[("limit", "1"), ("limit", "2")]).contains("more than once"));
        assert!(err(&[("from", "2000"), ("to", "1000")]).contains("`from`"));
    }
}
