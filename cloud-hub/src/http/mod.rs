//! The hub's HTTP API (axum): the REST API under `/api/v1`, the twin's NGSI-LD API under
//! `/ngsi-ld/v1`, and `/metrics`. This file is the router; each resource has its module:
//!
//! - [`events`] — `GET /api/v1/events`, `/api/v1/events/{id}`, `/api/v1/events/{id}/snapshot`
//! - [`aggregate`] — `GET /api/v1/events/aggregate`
//! - [`telemetry`] — `GET /api/v1/telemetry`; [`series`] — `/api/v1/telemetry/series[/query]`
//! - [`quarantine`] — `GET /api/v1/quarantine`
//! - [`snapshots`] — `PUT`/`GET /api/v1/snapshots/{id}` (evidence JPEGs)
//! - [`devices`], [`county`], [`inventory`], [`health`] — `GET /api/v1/{devices,county,inventory,health}`
//! - [`ngsi`] — the NGSI-LD API and the change stream `GET /api/v1/twin/stream`
//! - [`metrics`] — `GET /metrics` (Prometheus text)
//!
//! Shared by them: [`state`] (what handlers are given, store calls with a slot and a time
//! limit), [`query`] (typed query parameters), [`error`] (the REST API's one error shape,
//! `{"error": "…"}` naming the parameter, header or id at fault), [`auth`] (with `[auth] http =
//! "required"`, a middleware checks bearer tokens from [`tokens`] against the role its `POLICY`
//! table gives the route; evidence uploads carry the device's signature instead).

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::routing::get;
use axum::Router;

pub mod aggregate;
pub mod auth;
pub mod county;
pub mod devices;
pub mod error;
pub mod events;
pub mod health;
pub mod inventory;
pub mod metrics;
pub mod ngsi;
pub mod quarantine;
pub mod query;
pub mod series;
pub mod snapshots;
pub mod state;
pub mod telemetry;
pub mod tokens;

pub use crate::http::auth::{access_for, Access, HttpAccess};
pub use crate::http::error::ApiError;
pub use crate::http::state::ApiState;

use crate::http::auth::{require_access, Gate};
use crate::storage::store::Store;

pub fn router<S: Store>(state: ApiState<S>) -> Router {
    // Bounds what the body extractor reads, so an oversized upload without a Content-Length
    // (chunked) is cut off at the limit instead of being buffered whole.
    let upload_limit = DefaultBodyLimit::max(state.snapshot_max_bytes);
    let twin_routes = match &state.twin {
        Some(t) => crate::http::ngsi::router(t.clone()),
        None => Router::new(),
    };
    let gate = Gate {
        access: state.access.clone(),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/api/v1/events", get(crate::http::events::events::<S>))
        .route(
            "/api/v1/events/aggregate",
            get(crate::http::aggregate::events_aggregate::<S>),
        )
        .route(
            "/api/v1/events/{id}",
            get(crate::http::events::event_by_id::<S>),
        )
        .route(
            "/api/v1/events/{id}/snapshot",
            get(crate::http::events::event_snapshot::<S>),
        )
        .route(
            "/api/v1/telemetry",
            get(crate::http::telemetry::telemetry::<S>),
        )
        .route(
            "/api/v1/telemetry/series",
            get(crate::http::series::list::<S>),
        )
        .route(
            "/api/v1/telemetry/series/query",
            get(crate::http::series::query::<S>),
        )
        .route(
            "/api/v1/quarantine",
            get(crate::http::quarantine::quarantine::<S>),
        )
        .route(
            "/api/v1/snapshots/{id}",
            get(crate::http::snapshots::get_snapshot::<S>)
                .put(crate::http::snapshots::put_snapshot::<S>)
                .layer(upload_limit),
        )
        .route("/api/v1/devices", get(crate::http::devices::devices::<S>))
        .route("/api/v1/county", get(crate::http::county::county::<S>))
        .route(
            "/api/v1/inventory",
            get(crate::http::inventory::inventory::<S>),
        )
        .route("/api/v1/health", get(crate::http::health::health::<S>))
        .route("/metrics", get(crate::http::metrics::metrics::<S>))
        .merge(twin_routes)
        .fallback(not_found)
        // Outside the routes, so unknown paths are refused alike (no probing for endpoints);
        // a no-op with `http = "off"`.
        .layer(axum::middleware::from_fn_with_state(gate, require_access))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint `{}`", uri.path()))
}
