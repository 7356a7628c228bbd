//! The hub's HTTP API (axum): the REST API under `/api/v1`, the twin's NGSI-LD API under
//! `/ngsi-ld/v1`, and `/metrics`. This file is the router: every route with its OpenAPI
//! documentation ([`openapi`]); each resource has its module, handlers and docs together:
//!
//! - [`events`] — `GET /api/v1/events`, `/api/v1/events/{id}`, `/api/v1/events/{id}/snapshot`
//! - [`aggregate`] — `GET /api/v1/events/aggregate`
//! - [`telemetry`] — `GET /api/v1/telemetry`; [`series`] — `/api/v1/telemetry/series[/query]`
//! - [`quarantine`] — `GET /api/v1/quarantine`
//! - [`snapshots`] — `PUT`/`GET /api/v1/snapshots/{id}` (evidence JPEGs)
//! - [`devices`], [`county`], [`inventory`], [`health`] — `GET /api/v1/{devices,county,inventory,health}`
//! - [`ngsi`] — the NGSI-LD API and the change stream `GET /api/v1/twin/stream`
//! - [`metrics`] — `GET /metrics` (Prometheus text); [`openapi`] — `GET /api/v1/openapi.json`
//! - [`session`] — `POST`/`GET`/`DELETE /api/v1/session` (the web page's sign-in cookie; the
//!   sessions themselves are [`sessions`]);
//!   [`live`] — `GET /api/v1/live` (the page's one stream); [`web`] — the page itself at `/`
//! - [`models`] — `/api/v1/models` (the model warehouse: manifests, file uploads, resumable
//!   downloads for viewers and signing devices)
//! - [`provision`] — `POST /api/v1/provision` (a gateway's one-time enrolment token for its
//!   device credentials)
//! - [`cases`] — `/api/v1/cases` (and a case's photos), `/api/v1/evaluation`; [`open311`] — Open311 GeoReport v2 under
//!   `/open311/v2/` (citizen apps: services, requests; errors in that spec's format)
//!
//! Shared by them: [`state`] (what handlers are given, store calls with a slot and a time
//! limit), [`query`] (typed query parameters), [`error`] (the REST API's one error shape,
//! `{"error": "…"}` naming the parameter, header or id at fault), [`auth`] (with `[auth] http =
//! "required"`, a middleware checks bearer tokens from [`tokens`] against the role its `POLICY`
//! table gives the route; evidence uploads carry the device's signature instead).

use std::sync::Arc;

use aide::axum::routing::{get_with, post_with, put_with};
use aide::axum::ApiRouter;
use aide::openapi::OpenApi;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};

pub mod aggregate;
pub mod auth;
pub mod cases;
pub mod county;
pub mod devices;
pub mod error;
pub mod events;
pub mod fleet;
pub mod health;
pub mod inventory;
pub mod live;
pub mod metrics;
pub mod models;
pub mod ngsi;
pub mod open311;
pub mod openapi;
pub mod provision;
pub mod quarantine;
pub mod query;
pub mod rollouts;
pub mod series;
pub mod session;
pub mod sessions;
pub mod snapshots;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod web;

pub use crate::http::auth::{access_for, Access, HttpAccess};
pub use crate::http::error::ApiError;
pub use crate::http::state::ApiState;

use crate::http::aggregate as agg;
use crate::http::auth::{require_access, Gate};
use crate::http::cases as cas;
use crate::http::county as cty;
use crate::http::devices as dev;
use crate::http::events as ev;
use crate::http::fleet as flt;
use crate::http::health as hl;
use crate::http::inventory as inv;
use crate::http::metrics as met;
use crate::http::models as mdl;
use crate::http::openapi as doc;
use crate::http::provision as prov;
use crate::http::quarantine as qua;
use crate::http::rollouts as ro;
use crate::http::series as ser;
use crate::http::session as ses;
use crate::http::snapshots as snp;
use crate::http::telemetry as tel;
use crate::platform::twin::Twin;
use crate::storage::store::{SledStore, Store};

/// Every route of the API with its documentation. The NGSI-LD routes answer from `twin`
/// (without one, 404 ProblemDetails); uploads are cut off at `upload_limit` bytes.
fn routes<S: Store>(twin: Option<Arc<Twin>>, upload_limit: usize) -> ApiRouter<ApiState<S>> {
    ApiRouter::new()
        .api_route("/api/v1/events", get_with(ev::events::<S>, ev::events_docs))
        .api_route(
            "/api/v1/events/aggregate",
            get_with(agg::events_aggregate::<S>, agg::aggregate_docs),
        )
        .api_route(
            "/api/v1/events/{id}",
            get_with(ev::event_by_id::<S>, ev::event_by_id_docs),
        )
        .api_route(
            "/api/v1/events/{id}/snapshot",
            get_with(ev::event_snapshot::<S>, ev::event_snapshot_docs),
        )
        .api_route(
            "/api/v1/telemetry",
            get_with(tel::telemetry::<S>, tel::telemetry_docs),
        )
        .api_route(
            "/api/v1/telemetry/series",
            get_with(ser::list::<S>, ser::list_docs),
        )
        .api_route(
            "/api/v1/telemetry/series/query",
            get_with(ser::query::<S>, ser::query_docs),
        )
        .api_route(
            "/api/v1/quarantine",
            get_with(qua::quarantine::<S>, qua::quarantine_docs),
        )
        .api_route(
            "/api/v1/snapshots/{id}",
            get_with(snp::get_snapshot::<S>, snp::get_snapshot_docs)
                .merge(put_with(snp::put_snapshot::<S>, snp::put_snapshot_docs))
                // Bounds what the body extractor reads, so an oversized upload without a
                // Content-Length (chunked) is cut off at the limit instead of being buffered.
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .api_route(
            "/api/v1/devices",
            get_with(dev::devices::<S>, dev::devices_docs),
        )
        .api_route(
            "/api/v1/county",
            get_with(cty::county::<S>, cty::county_docs),
        )
        .api_route(
            "/api/v1/county/outline",
            get_with(cty::outline::<S>, cty::outline_docs),
        )
        .api_route(
            "/api/v1/inventory",
            get_with(inv::inventory::<S>, inv::inventory_docs),
        )
        .api_route(
            "/api/v1/cases",
            get_with(cas::list::<S>, cas::list_docs)
                .merge(post_with(cas::report::<S>, cas::report_docs)),
        )
        .api_route(
            "/api/v1/cases/stream",
            get_with(cas::stream::<S>, cas::stream_docs),
        )
        .api_route("/api/v1/cases/{id}", get_with(cas::get::<S>, cas::get_docs))
        .api_route(
            "/api/v1/evaluation",
            get_with(cas::evaluation::<S>, cas::evaluation_docs),
        )
        .api_route(
            "/api/v1/cases/{id}/actions",
            post_with(cas::act::<S>, cas::act_docs),
        )
        .api_route(
            "/api/v1/cases/{id}/photos",
            post_with(cas::add_photo::<S>, cas::add_photo_docs)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .api_route("/api/v1/health", get_with(hl::health::<S>, hl::health_docs))
        .api_route(
            "/api/v1/openapi.json",
            get_with(doc::document, doc::document_docs),
        )
        .api_route("/metrics", get_with(met::metrics::<S>, met::metrics_docs))
        .api_route(
            "/api/v1/session",
            post_with(ses::sign_in::<S>, ses::sign_in_docs)
                .get_with(ses::whoami::<S>, ses::whoami_docs)
                .delete_with(ses::sign_out::<S>, ses::sign_out_docs),
        )
        .api_route("/api/v1/live", get_with(live::live::<S>, live::live_docs))
        .api_route(
            "/api/v1/provision",
            post_with(prov::provision::<S>, prov::provision_docs),
        )
        .api_route(
            "/api/v1/fleet/configs",
            get_with(flt::list::<S>, flt::list_docs),
        )
        .api_route(
            "/api/v1/fleet/configs/{site}/{device}",
            get_with(flt::get::<S>, flt::get_docs).put_with(flt::set::<S>, flt::set_docs),
        )
        .api_route(
            "/api/v1/fleet/groups",
            get_with(ro::groups::<S>, ro::groups_docs),
        )
        .api_route(
            "/api/v1/fleet/groups/{group}",
            get_with(ro::group::<S>, ro::group_docs)
                .put_with(ro::put_group::<S>, ro::put_group_docs)
                .delete_with(ro::delete_group::<S>, ro::delete_group_docs),
        )
        .api_route(
            "/api/v1/rollouts",
            get_with(ro::list::<S>, ro::list_docs).post_with(ro::start::<S>, ro::start_docs),
        )
        .api_route(
            "/api/v1/rollouts/{id}",
            get_with(ro::get::<S>, ro::get_docs),
        )
        .api_route(
            "/api/v1/rollouts/{id}/{action}",
            post_with(ro::act::<S>, ro::act_docs),
        )
        .api_route("/api/v1/models", get_with(mdl::list::<S>, mdl::list_docs))
        .api_route(
            "/api/v1/models/{name}/{version}",
            get_with(mdl::get::<S>, mdl::get_docs).put_with(mdl::register::<S>, mdl::register_docs),
        )
        .api_route(
            "/api/v1/models/{name}/{version}/retire",
            post_with(mdl::retire::<S>, mdl::retire_docs),
        )
        .api_route(
            "/api/v1/models/{name}/{version}/files/{kind}",
            get_with(mdl::download::<S>, mdl::download_docs)
                .put_with(mdl::upload::<S>, mdl::upload_docs)
                // The upload is streamed and bounded by the manifest's size, not this limit.
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(crate::http::ngsi::routes(twin))
        .merge(crate::http::open311::routes::<S>())
}

/// The API's OpenAPI document, as `GET /api/v1/openapi.json` serves it.
pub fn openapi() -> OpenApi {
    doc::document_of(|| routes::<SledStore>(None, 0))
}

pub fn router<S: Store>(state: ApiState<S>) -> Router {
    doc::begin();
    let mut api = doc::base();
    let app = routes::<S>(state.twin.clone(), state.snapshot_max_bytes).finish_api(&mut api);
    let document = doc::Document(Arc::new(doc::to_json(&api)));
    let gate = Gate {
        access: state.access.clone(),
        metrics: state.metrics.clone(),
    };
    app.fallback(page_or_not_found)
        .layer(Extension(document))
        // Outside the routes, so unknown paths are refused alike (no probing for endpoints);
        // a no-op with `http = "off"`.
        .layer(axum::middleware::from_fn_with_state(gate, require_access))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The web page for its paths (`crate::http::web`), the API's 404 for anything else.
async fn page_or_not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match web::serve(&method, &uri, &headers) {
        Some(page) => page,
        None => ApiError::not_found(format!("no such endpoint `{}`", uri.path())).into_response(),
    }
}
