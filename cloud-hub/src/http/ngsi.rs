//! The twin over HTTP: a subset of the NGSI-LD API (ETSI GS CIM 009) and a change stream.
//!
//! - `GET /ngsi-ld/v1/entities?type=&id=&idPattern=&q=&georel=&geometry=&coordinates=&attrs=&limit=&offset=&count=&options=`
//! - `GET /ngsi-ld/v1/entities/{id}?attrs=&options=`
//! - `GET /ngsi-ld/v1/types[?details=true]`
//! - `GET /ngsi-ld/v1/temporal/entities/{id}?timerel=&timeAt=&endTimeAt=&attrs=&lastN=&options=`
//! - `GET /api/v1/twin/stream?type=&id=` — Server-Sent Events, one `change` per entity change
//!
//! Normalized representation by default (`options=keyValues` for the simplified one);
//! `application/ld+json` with `@context` in the body, or `application/json` with the context in
//! a `Link` header when the client accepts only that. Errors are NGSI-LD ProblemDetails naming
//! the parameter. See `docs/twin.md`.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aide::axum::routing::get_with;
use aide::axum::ApiRouter;
use aide::openapi::Response as DocResponse;
use aide::transform::TransformOperation;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Router;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::openapi::{content, respond, schema_of, viewer, with_header};
use crate::http::query::{from_pairs, from_text, Params, QueryFault, Repeats, Style};
use crate::http::sse::{last_event_id, Follow, Item};
use crate::platform::ngsi::{parse_geometry, parse_georel, GeoQuery, GeoRel, Query as QQuery};
use crate::platform::twin::history::Range;
use crate::platform::twin::{iso_ms, Change, Entity, EntityType, Observed, Twin};
use crate::support::timeparse::parse_time_ms;

/// The NGSI-LD core context; our type and attribute names are terms of its default vocabulary.
pub const CORE_CONTEXT: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld";
pub const RESULTS_COUNT_HEADER: &str = "ngsild-results-count";
const LD_JSON: &str = "application/ld+json";
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1000;
/// Instances per attribute in one temporal answer at most.
pub const MAX_INSTANCES: usize = 1000;
pub use crate::http::sse::MAX_STREAMS;
/// Bound on a temporal query's storage reads.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// idPattern regexes are compiled with this size limit (a hostile pattern cannot eat memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Clone)]
struct NgsiState {
    /// `None`: the hub runs without a county model, so without a twin.
    twin: Option<Arc<Twin>>,
    streams: Arc<Semaphore>,
}

impl NgsiState {
    fn twin(&self) -> Result<&Arc<Twin>, Problem> {
        self.twin.as_ref().ok_or_else(|| {
            Problem::not_found(
                "no digital twin: the hub runs without a county model (cloud-hub serve --county \
                 DIR, or county_dir in the config)",
            )
        })
    }
}

/// The NGSI-LD routes with their documentation, for [`crate::http::router`] to merge; they
/// answer from `twin` (without one, 404 ProblemDetails).
pub fn routes<S: Clone + Send + Sync + 'static>(twin: Option<Arc<Twin>>) -> ApiRouter<S> {
    ApiRouter::new()
        .api_route("/ngsi-ld/v1/entities", get_with(entities, entities_docs))
        .api_route("/ngsi-ld/v1/entities/{id}", get_with(entity, entity_docs))
        .api_route("/ngsi-ld/v1/types", get_with(types, types_docs))
        .api_route(
            "/ngsi-ld/v1/temporal/entities/{id}",
            get_with(temporal, temporal_docs),
        )
        .api_route("/api/v1/twin/stream", get_with(stream, stream_docs))
        .with_state(NgsiState {
            twin,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        })
}

/// The NGSI-LD routes of `twin` as a plain router (benchmarks).
pub fn router<S: Clone + Send + Sync + 'static>(twin: Arc<Twin>) -> Router<S> {
    routes(Some(twin)).into()
}

/// Each operation lists its ProblemDetails statuses itself (see `problems`).
impl aide::OperationOutput for Problem {
    type Inner = ProblemDetails;
}

/// The body of an NGSI-LD error (ETSI GS CIM 009, RFC 7807 ProblemDetails).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProblemDetails {
    /// `https://uri.etsi.org/ngsi-ld/errors/{BadRequestData|ResourceNotFound|InternalError}`.
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    /// What was wrong, naming the parameter at fault.
    detail: String,
}

/// An NGSI-LD ProblemDetails answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
}

impl Problem {
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestData",
            title: "Bad request data",
            detail: detail.into(),
        }
    }

    fn param(name: &str, detail: impl std::fmt::Display) -> Problem {
        Problem::bad_request(format!("query parameter `{name}`: {detail}"))
    }

    fn not_found(detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::NOT_FOUND,
            kind: "ResourceNotFound",
            title: "Resource not found",
            detail: detail.into(),
        }
    }

    fn internal(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind: "InternalError",
            title: "Internal error",
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemDetails {
            kind: format!("https://uri.etsi.org/ngsi-ld/errors/{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail,
        };
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&body).unwrap_or_default(),
        )
            .into_response()
    }
}

/// NGSI-LD errors (ProblemDetails, `application/json`) with these statuses.
fn problems<'a>(mut op: TransformOperation<'a>, list: &[(u16, &str)]) -> TransformOperation<'a> {
    for (status, description) in list {
        op = respond(
            op,
            *status,
            content(
                description,
                "application/json",
                schema_of::<ProblemDetails>(),
            ),
        );
    }
    op
}

/// An NGSI-LD answer: `application/ld+json` with `@context` in the body (the default), or
/// `application/json` with the context in a `Link` header when the client accepts only that.
fn ld(description: &str, schema: schemars::Schema) -> DocResponse {
    let mut r = content(description, LD_JSON, schema.clone());
    r.content
        .extend(content("", "application/json", schema).content);
    with_header(
        r,
        "Link",
        "The JSON-LD `@context`, with `application/json`",
        false,
    )
}

/// An entity, normalized (`{"type": "Property", "value": …}` per attribute) or simplified
/// (`options=keyValues`: attribute values only).
pub struct NgsiEntity;

impl JsonSchema for NgsiEntity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NgsiEntity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "required": ["id", "type"],
            "properties": {
                "id": {"type": "string", "description": "`urn:ngsi-ld:{Type}:…`"},
                "type": {"type": "string", "description": "The entity type (County, Town, Road, Zone, Gateway, Camera, Sensor …)"},
                "@context": {"type": "string", "description": "With `application/ld+json`: the NGSI-LD core context"},
            },
            "additionalProperties": true,
        })
    }
}

/// `GET /ngsi-ld/v1/types`: the type list, or (with `details=true`) each type's attributes.
pub struct NgsiTypes;

impl JsonSchema for NgsiTypes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NgsiTypes".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                {
                    "type": "object",
                    "description": "The EntityTypeList",
                    "required": ["id", "type", "typeList"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"const": "EntityTypeList"},
                        "typeList": {"type": "array", "items": {"type": "string"}},
                        "@context": {"type": "string"},
                    },
                },
                {
                    "type": "array",
                    "description": "With `details=true`: each EntityType",
                    "items": {
                        "type": "object",
                        "required": ["id", "type", "typeName", "attributeNames"],
                        "properties": {
                            "id": {"type": "string"},
                            "type": {"const": "EntityType"},
                            "typeName": {"type": "string"},
                            "attributeNames": {"type": "array", "items": {"type": "string"}},
                            "@context": {"type": "string"},
                        },
                    },
                },
            ],
        })
    }
}

/// What every twin operation may answer besides its own.
fn twin_errors(op: TransformOperation) -> TransformOperation {
    viewer(problems(
        op,
        &[
            (
                400,
                "A parameter was refused (unknown, repeated, or a bad value): the detail names it",
            ),
            (
                404,
                "No such entity, or the hub runs without a county model (no twin)",
            ),
        ],
    ))
}

fn entities_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("queryEntities")
        .tag("twin")
        .summary("Twin entities, filtered (NGSI-LD Query Entities)")
        .description("`type`/`id`/`idPattern`, `q` over attributes and geo queries, paged.");
    let mut r = with_header(
        ld(
            "The entities of this page",
            schemars::json_schema!({"type": "array", "items": schema_of::<NgsiEntity>()}),
        ),
        "NGSILD-Results-Count",
        "With `count=true`: entities matching in all",
        false,
    );
    for (name, operation) in [
        ("entity", "retrieveEntity"),
        ("history", "retrieveTemporalEntity"),
    ] {
        r.links.insert(
            name.into(),
            aide::openapi::ReferenceOr::Item(aide::openapi::Link {
                description: Some("The first entity of the page".into()),
                operation: aide::openapi::LinkOperation::OperationId(operation.into()),
                request_body: None,
                parameters: [("id".to_string(), json!("$response.body#/0/id"))].into(),
                server: None,
                extensions: Default::default(),
            }),
        );
    }
    twin_errors(respond(op, 200, r))
}

fn entity_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("retrieveEntity")
        .tag("twin")
        .summary("One twin entity (NGSI-LD Retrieve Entity)");
    twin_errors(respond(
        op,
        200,
        ld("The entity", schema_of::<NgsiEntity>()),
    ))
}

fn types_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("retrieveTypes")
        .tag("twin")
        .summary("Entity types present in the twin (NGSI-LD Retrieve Available Entity Types)");
    twin_errors(respond(op, 200, ld("The types", schema_of::<NgsiTypes>())))
}

fn temporal_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("retrieveTemporalEntity")
        .tag("twin")
        .summary("An entity's attribute history (NGSI-LD Retrieve Temporal Evolution)")
        .description(
            "Instances of each live attribute within the time range, at most 1000 per attribute.",
        );
    let op = respond(
        op,
        200,
        ld(
            "The entity with its attributes' instances",
            schema_of::<NgsiEntity>(),
        ),
    );
    let op = respond(
        op,
        206,
        with_header(
            ld(
                "More instances than one answer holds: the first of them; narrow the range or \
                 use `lastN`",
                schema_of::<NgsiEntity>(),
            ),
            "Content-Range",
            "`date-time {first}-{last}/*`: the range returned",
            true,
        ),
    );
    twin_errors(problems(
        op,
        &[
            (500, "The history store failed (logged)"),
            (
                503,
                "The twin keeps no history, or the read took longer than its limit",
            ),
        ],
    ))
}

fn stream_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("twinStream")
        .tag("twin")
        .summary("Server-Sent Events: one `change` per entity change")
        .description(
            "Each `change` event carries the stream position as `id` (send it back as \
             `Last-Event-ID` to resume) and the changed attributes, normalized. `lagged` says \
             changes were missed: re-read the entities. Ends when the hub shuts down.",
        );
    let op = respond(
        op,
        200,
        content(
            "The event stream",
            "text/event-stream",
            schemars::json_schema!({"type": "string"}),
        ),
    );
    twin_errors(problems(
        op,
        &[(503, "Too many change streams are open; retry later")],
    ))
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// NGSI-LD's wording of a refused query string: ProblemDetails naming the parameter; a
/// repeated parameter or one the endpoint does not take is refused.
pub enum Ngsi {}

impl Style for Ngsi {
    type Rejection = Problem;
    fn reject(fault: QueryFault) -> Problem {
        match fault {
            QueryFault::Malformed(e) => Problem::bad_request(format!("query string: {e}")),
            QueryFault::Unknown { name, known } => Problem::bad_request(format!(
                "unknown query parameter `{}` (known: {})",
                clip(&name),
                known.join(", ")
            )),
            QueryFault::Repeated(name) => Problem::param(&name, "given more than once"),
            QueryFault::Bad { name, detail } => Problem::param(&name, detail),
        }
    }
}

/// Parameters of `GET /ngsi-ld/v1/entities`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EntitiesParams {
    /// Comma list of entity types (e.g. `Camera,Sensor`).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Comma list of entity ids.
    id: Option<String>,
    /// A regular expression the entity id must match.
    #[serde(rename = "idPattern")]
    id_pattern: Option<String>,
    /// An NGSI-LD query over attributes, e.g. `status=="online"`.
    q: Option<String>,
    /// `near;maxDistance==…` / `near;minDistance==…` (metres), `within`, `contains`,
    /// `intersects`, `disjoint`, `equals`, `overlaps`; needs `geometry` and `coordinates`.
    georel: Option<String>,
    /// `Point`, `LineString` or `Polygon`.
    geometry: Option<String>,
    /// The geometry's coordinates as a JSON array, [lon, lat] order.
    coordinates: Option<String>,
    /// Only `location`.
    geoproperty: Option<String>,
    /// Comma list of attribute names to return (entities with none of them are left out).
    attrs: Option<String>,
    /// Most entities returned (default 20).
    limit: Option<NgsiCount<MAX_LIMIT>>,
    /// Entities to skip.
    offset: Option<NgsiCount<{ usize::MAX }>>,
    /// `true`: the total is in the `NGSILD-Results-Count` header.
    count: Option<Flag>,
    /// Comma list of `keyValues` (or `simplified`), `normalized`, `sysAttrs`.
    options: Option<String>,
    /// `simplified`/`keyValues` or `normalized`.
    format: Option<String>,
    /// Accepted; every entity is local.
    #[serde(rename = "local")]
    _local: Option<String>,
}

/// Parameters of `GET /ngsi-ld/v1/entities/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EntityParams {
    /// Comma list of attribute names to return.
    attrs: Option<String>,
    /// Comma list of `keyValues` (or `simplified`), `normalized`, `sysAttrs`.
    options: Option<String>,
    /// `simplified`/`keyValues` or `normalized`.
    format: Option<String>,
    /// Accepted; every entity is local.
    #[serde(rename = "local")]
    _local: Option<String>,
}

/// Parameters of `GET /ngsi-ld/v1/types`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TypesParams {
    /// `true`: each type with its attribute names.
    details: Option<Flag>,
    /// Accepted; every entity is local.
    #[serde(rename = "local")]
    _local: Option<String>,
}

/// Parameters of `GET /ngsi-ld/v1/temporal/entities/{id}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct TemporalParams {
    /// `before`, `after` or `between` `timeAt` (and `endTimeAt`).
    timerel: Option<String>,
    /// RFC 3339 or Unix ms.
    #[serde(rename = "timeAt")]
    time_at: Option<String>,
    /// RFC 3339 or Unix ms; with `timerel=between`.
    #[serde(rename = "endTimeAt")]
    end_time_at: Option<String>,
    /// Comma list of attribute names to return.
    attrs: Option<String>,
    /// Only the last N instances of each attribute.
    #[serde(rename = "lastN")]
    last_n: Option<NgsiCount<MAX_INSTANCES>>,
    /// Comma list of `temporalValues`, `keyValues`, `normalized`, `sysAttrs`.
    options: Option<String>,
    /// Only `observedAt`.
    timeproperty: Option<String>,
    /// Accepted; every entity is local.
    #[serde(rename = "local")]
    _local: Option<String>,
}

/// Parameters of `GET /api/v1/twin/stream`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct StreamParams {
    /// Comma list of entity types to stream.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Comma list of entity ids to stream.
    id: Option<String>,
}

/// A non-negative integer at most `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgsiCount<const MAX: usize>(pub usize);

impl<'de, const MAX: usize> Deserialize<'de> for NgsiCount<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            let n: usize = v
                .parse()
                .map_err(|_| format!("`{}` is not a non-negative integer", clip(v)))?;
            if n > MAX {
                return Err(format!("{n} exceeds the maximum {MAX}"));
            }
            Ok(NgsiCount(n))
        })
    }
}

impl<const MAX: usize> JsonSchema for NgsiCount<MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("NgsiCount{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        if MAX == usize::MAX {
            json_schema!({"type": "integer", "minimum": 0})
        } else {
            json_schema!({"type": "integer", "minimum": 0, "maximum": MAX})
        }
    }
}

/// `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| match v {
            "true" => Ok(Flag(true)),
            "false" => Ok(Flag(false)),
            _ => Err(format!("`{}` is not true or false", clip(v))),
        })
    }
}

impl JsonSchema for Flag {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "enum": ["true", "false"]})
    }
}

fn list(v: &str) -> Vec<&str> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// `application/ld+json` unless the client asks for `application/json` and not for ld+json.
fn wants_ld(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains(LD_JSON) || !accept.contains("application/json")
}

/// Options: `keyValues` (or `simplified`), `normalized`, `temporalValues`; `sysAttrs` is
/// accepted and has no effect (no createdAt/modifiedAt are kept).
#[derive(Default)]
struct Options {
    key_values: bool,
    temporal_values: bool,
}

fn options(options: Option<&str>, format: Option<&str>) -> Result<Options, Problem> {
    let mut o = Options::default();
    if let Some(v) = options {
        for opt in list(v) {
            match opt {
                "keyValues" | "simplified" => o.key_values = true,
                "normalized" => {}
                "temporalValues" => o.temporal_values = true,
                "sysAttrs" => {}
                other => {
                    return Err(Problem::param(
                        "options",
                        format!(
                            "`{}` is not supported (keyValues, normalized, temporalValues)",
                            clip(other)
                        ),
                    ))
                }
            }
        }
    }
    if let Some(f) = format {
        match f {
            "simplified" | "keyValues" => o.key_values = true,
            "normalized" => {}
            other => {
                return Err(Problem::param(
                    "format",
                    format!("`{}` is not supported", clip(other)),
                ))
            }
        }
    }
    Ok(o)
}

/// Attribute names: terms of the default vocabulary, so letters, digits and `_` only.
fn attrs_param(attrs: Option<&str>) -> Result<Option<BTreeSet<String>>, Problem> {
    let Some(v) = attrs else {
        return Ok(None);
    };
    let names: BTreeSet<String> = list(v).into_iter().map(str::to_string).collect();
    if names.is_empty() {
        return Err(Problem::param("attrs", "empty list"));
    }
    if let Some(bad) = names
        .iter()
        .find(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(Problem::param(
            "attrs",
            format!("`{}` is not an attribute name", clip(bad)),
        ));
    }
    Ok(Some(names))
}

fn property(o: &Observed) -> Value {
    json!({"type": "Property", "value": o.value, "observedAt": iso_ms(o.observed_ms)})
}

/// An entity in normalized or simplified (keyValues) form; `attrs` restricts the attributes.
pub fn render(e: &Entity, attrs: Option<&BTreeSet<String>>, key_values: bool, ld: bool) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("type".into(), json!(e.kind.as_str()));
    let want = |n: &str| attrs.is_none_or(|a| a.contains(n));
    if let Some(loc) = e.location.as_ref().filter(|_| want("location")) {
        let g = json!(loc);
        m.insert(
            "location".into(),
            if key_values {
                g
            } else {
                json!({"type": "GeoProperty", "value": g})
            },
        );
    }
    for (k, v) in e.props.iter().filter(|(k, _)| want(k)) {
        m.insert(
            k.clone(),
            if key_values {
                v.clone()
            } else {
                json!({"type": "Property", "value": v})
            },
        );
    }
    for (k, r) in e.rels.iter().filter(|(k, _)| want(k)) {
        m.insert(
            k.clone(),
            if key_values {
                r.to_json()
            } else {
                json!({"type": "Relationship", "object": r.to_json()})
            },
        );
    }
    for (k, l) in e.live.iter().filter(|(k, _)| want(k)) {
        m.insert(
            k.clone(),
            if key_values {
                l.current.value.clone()
            } else {
                property(&l.current)
            },
        );
    }
    if ld {
        m.insert("@context".into(), json!(CORE_CONTEXT));
    }
    Value::Object(m)
}

/// The body as ld+json, or as json with the context in a `Link` header.
fn answer(
    status: StatusCode,
    body: Value,
    ld: bool,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if ld { LD_JSON } else { "application/json" }),
    );
    if !ld {
        let link = format!(
            "<{CORE_CONTEXT}>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\""
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    r
}

/// Everything `GET /ngsi-ld/v1/entities` filters on.
pub struct EntityFilter {
    types: Option<HashSet<String>>,
    ids: Option<HashSet<String>>,
    id_pattern: Option<regex::Regex>,
    q: Option<QQuery>,
    geo: Option<GeoQuery>,
    attrs: Option<BTreeSet<String>>,
}

impl EntityFilter {
    /// The filter of query pairs (what the entities endpoint takes, refused alike).
    pub fn parse(pairs: &[(String, String)]) -> Result<EntityFilter, Problem> {
        let p: EntitiesParams = from_pairs(pairs, Repeats::Refuse).map_err(Ngsi::reject)?;
        EntityFilter::of(&p)
    }

    fn of(p: &EntitiesParams) -> Result<EntityFilter, Problem> {
        let types = p
            .kind
            .as_deref()
            .map(|v| list(v).into_iter().map(str::to_string).collect());
        let ids =
            p.id.as_deref()
                .map(|v| list(v).into_iter().map(str::to_string).collect());
        let id_pattern = match p.id_pattern.as_deref() {
            None => None,
            Some(p) => Some(
                regex::RegexBuilder::new(p)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| Problem::param("idPattern", e))?,
            ),
        };
        let q = match p.q.as_deref() {
            None => None,
            Some(v) => Some(QQuery::parse(v).map_err(|e| Problem::param("q", e))?),
        };
        let geo = match p.georel.as_deref() {
            None => {
                for (name, v) in [("geometry", &p.geometry), ("coordinates", &p.coordinates)] {
                    if v.is_some() {
                        return Err(Problem::param(name, "needs `georel`"));
                    }
                }
                None
            }
            Some(rel) => {
                let rel = parse_georel(rel).map_err(|e| Problem::param(e.param, e.detail))?;
                let kind = p.geometry.as_deref().ok_or_else(|| {
                    Problem::param(
                        "geometry",
                        "required with `georel` (Point, LineString, Polygon)",
                    )
                })?;
                let coords = p.coordinates.as_deref().ok_or_else(|| {
                    Problem::param(
                        "coordinates",
                        "required with `georel`: a JSON array, [lon, lat] order",
                    )
                })?;
                let geometry =
                    parse_geometry(kind, coords).map_err(|e| Problem::param(e.param, e.detail))?;
                if matches!(rel, GeoRel::Near { .. })
                    && !matches!(geometry, crate::platform::geo::Geometry::Point(_))
                {
                    return Err(Problem::param("geometry", "`near` takes a Point"));
                }
                Some(GeoQuery { rel, geometry })
            }
        };
        if let Some(g) = p.geoproperty.as_deref() {
            if g != "location" {
                return Err(Problem::param(
                    "geoproperty",
                    "only `location` is supported",
                ));
            }
        }
        Ok(EntityFilter {
            types,
            ids,
            id_pattern,
            q,
            geo,
            attrs: attrs_param(p.attrs.as_deref())?,
        })
    }

    pub fn matches(&self, e: &Entity) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(e.kind.as_str()))
            && self.ids.as_ref().is_none_or(|i| i.contains(&e.id))
            && self.id_pattern.as_ref().is_none_or(|p| p.is_match(&e.id))
            // Entities with none of the requested attributes are not returned.
            && self.attrs.as_ref().is_none_or(|a| a.iter().any(|n| e.attr(n).is_some()))
            && self.q.as_ref().is_none_or(|q| q.matches(e))
            && self.geo.as_ref().is_none_or(|g| g.matches(e))
    }
}

async fn entities(
    State(st): State<NgsiState>,
    headers: HeaderMap,
    Params(p, _): Params<EntitiesParams, Ngsi>,
) -> Result<Response, Problem> {
    let filter = EntityFilter::of(&p)?;
    let opts = options(p.options.as_deref(), p.format.as_deref())?;
    let limit = p.limit.map_or(DEFAULT_LIMIT, |n| n.0);
    let offset = p.offset.map_or(0, |n| n.0);
    let count = p.count.is_some_and(|c| c.0);
    let ld = wants_ld(&headers);
    let (page, total) = st.twin()?.read(|ents, _| {
        let mut total = 0usize;
        let mut page = Vec::new();
        for e in ents.iter().filter(|e| filter.matches(e)) {
            if total >= offset && page.len() < limit {
                page.push(render(e, filter.attrs.as_ref(), opts.key_values, ld));
            }
            total += 1;
        }
        (page, total)
    });
    let extra = if count {
        vec![(RESULTS_COUNT_HEADER, total.to_string())]
    } else {
        Vec::new()
    };
    Ok(answer(StatusCode::OK, Value::Array(page), ld, extra))
}

/// An entity id in the path (`{id}`).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct EntityIdPath {
    /// The entity's URI, `urn:ngsi-ld:{Type}:…`.
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9+.-]*:"))]
    id: String,
}

fn entity_id(path: Result<Path<EntityIdPath>, PathRejection>) -> Result<String, Problem> {
    let Path(EntityIdPath { id }) =
        path.map_err(|e| Problem::bad_request(format!("entity id in the path: {e}")))?;
    if !id.contains(':') {
        return Err(Problem::bad_request(format!(
            "entity id `{}` is not a URI (urn:ngsi-ld:Type:…)",
            clip(&id)
        )));
    }
    Ok(id)
}

async fn entity(
    State(st): State<NgsiState>,
    headers: HeaderMap,
    path: Result<Path<EntityIdPath>, PathRejection>,
    Params(p, _): Params<EntityParams, Ngsi>,
) -> Result<Response, Problem> {
    let id = entity_id(path)?;
    let attrs = attrs_param(p.attrs.as_deref())?;
    let opts = options(p.options.as_deref(), p.format.as_deref())?;
    let ld = wants_ld(&headers);
    let body = st.twin()?.read(|ents, index| {
        index
            .get(&id)
            .map(|&i| render(&ents[i], attrs.as_ref(), opts.key_values, ld))
    });
    match body {
        Some(b) => Ok(answer(StatusCode::OK, b, ld, Vec::new())),
        None => Err(Problem::not_found(format!("no entity `{}`", clip(&id)))),
    }
}

async fn types(
    State(st): State<NgsiState>,
    headers: HeaderMap,
    Params(p, _): Params<TypesParams, Ngsi>,
) -> Result<Response, Problem> {
    let details = p.details.is_some_and(|d| d.0);
    let ld = wants_ld(&headers);
    let present: Vec<(EntityType, BTreeSet<String>)> = st.twin()?.read(|ents, _| {
        EntityType::ALL
            .into_iter()
            .filter_map(|t| {
                let mut names = BTreeSet::new();
                let mut any = false;
                for e in ents.iter().filter(|e| e.kind == t) {
                    any = true;
                    names.extend(e.attr_names());
                }
                any.then_some((t, names))
            })
            .collect()
    });
    let mut body = if details {
        Value::Array(
            present
                .iter()
                .map(|(t, names)| {
                    json!({"id": t.as_str(), "type": "EntityType", "typeName": t.as_str(),
                           "attributeNames": names})
                })
                .collect(),
        )
    } else {
        json!({"id": "urn:ngsi-ld:EntityTypeList:csb-twin", "type": "EntityTypeList",
               "typeList": present.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>()})
    };
    if ld {
        match &mut body {
            Value::Object(m) => {
                m.insert("@context".into(), json!(CORE_CONTEXT));
            }
            Value::Array(a) => {
                for v in a {
                    if let Value::Object(m) = v {
                        m.insert("@context".into(), json!(CORE_CONTEXT));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(answer(StatusCode::OK, body, ld, Vec::new()))
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, Problem> {
    match v {
        None => Ok(None),
        // An unencoded `+` of a UTC offset arrives as a space.
        Some(v) => parse_time_ms(&v.replace(' ', "+"))
            .map(Some)
            .map_err(|e| Problem::param(name, e)),
    }
}

/// `timerel` with `timeAt`/`endTimeAt` → the observedAt range: `before` t < timeAt, `after`
/// t > timeAt, `between` timeAt ≤ t < endTimeAt; none: everything kept.
pub fn temporal_range(pairs: &[(String, String)]) -> Result<Range, Problem> {
    let p: TemporalParams = from_pairs(pairs, Repeats::Refuse).map_err(Ngsi::reject)?;
    temporal_range_of(&p)
}

fn temporal_range_of(p: &TemporalParams) -> Result<Range, Problem> {
    let at = time_param("timeAt", p.time_at.as_deref())?;
    let end = time_param("endTimeAt", p.end_time_at.as_deref())?;
    let mut r = Range::default();
    match p.timerel.as_deref() {
        None => {
            if at.is_some() || end.is_some() {
                return Err(Problem::param(
                    "timerel",
                    "required with timeAt (before, after, between)",
                ));
            }
        }
        Some(rel) => {
            let at = at.ok_or_else(|| {
                Problem::param("timeAt", format!("required with timerel={}", clip(rel)))
            })?;
            match rel {
                "before" | "after" if end.is_some() => {
                    return Err(Problem::param("endTimeAt", "only with timerel=between"))
                }
                "before" => r.to_ms = Some(at),
                "after" => r.from_ms = Some(at.saturating_add(1)),
                "between" => {
                    let end = end.ok_or_else(|| {
                        Problem::param("endTimeAt", "required with timerel=between")
                    })?;
                    if end <= at {
                        return Err(Problem::param("endTimeAt", "must be after timeAt"));
                    }
                    r.from_ms = Some(at);
                    r.to_ms = Some(end);
                }
                other => {
                    return Err(Problem::param(
                        "timerel",
                        format!("`{}` is not before, after or between", clip(other)),
                    ))
                }
            }
        }
    }
    if let Some(NgsiCount(n)) = p.last_n {
        if n == 0 {
            return Err(Problem::param("lastN", "must be at least 1"));
        }
        r.last_n = Some(n);
    }
    if let Some(tp) = p.timeproperty.as_deref() {
        if tp != "observedAt" {
            return Err(Problem::param("timeproperty", "only observedAt is kept"));
        }
    }
    Ok(r)
}

async fn temporal(
    State(st): State<NgsiState>,
    headers: HeaderMap,
    path: Result<Path<EntityIdPath>, PathRejection>,
    Params(p, _): Params<TemporalParams, Ngsi>,
) -> Result<Response, Problem> {
    let id = entity_id(path)?;
    let range = temporal_range_of(&p)?;
    let attrs = attrs_param(p.attrs.as_deref())?;
    let opts = options(p.options.as_deref(), None)?;
    let ld = wants_ld(&headers);
    let twin = st.twin()?;
    let Some((kind, names)) = twin.read(|ents, index| {
        index.get(&id).map(|&i| {
            let e = &ents[i];
            let names: Vec<String> = match &attrs {
                Some(a) => a.iter().cloned().collect(),
                None => e.live.keys().cloned().collect(),
            };
            (e.kind, names)
        })
    }) else {
        return Err(Problem::not_found(format!("no entity `{}`", clip(&id))));
    };
    let Some(history) = twin.history().cloned() else {
        return Err(Problem::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the twin keeps no history",
        ));
    };
    let id2 = id.clone();
    let read = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|n| {
                history
                    .range(&id2, &n, range, MAX_INSTANCES)
                    .map(|r| (n, r))
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let found = match tokio::time::timeout(HISTORY_TIMEOUT, read).await {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "twin history read failed");
            return Err(Problem::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ));
        }
        Ok(Err(e)) => {
            return Err(Problem::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        }
        Err(_) => {
            return Err(Problem::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("history read took longer than {HISTORY_TIMEOUT:?}; narrow the query"),
            ))
        }
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("type".into(), json!(kind.as_str()));
    let mut truncated = false;
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for (name, (instances, more)) in found {
        if instances.is_empty() {
            continue;
        }
        truncated |= more;
        for i in &instances {
            first = first.min(i.observed_ms);
            last = last.max(i.observed_ms);
        }
        let v = if opts.temporal_values {
            json!({"type": "Property",
                   "values": instances.iter().map(|i| json!([i.value, iso_ms(i.observed_ms)])).collect::<Vec<_>>()})
        } else {
            Value::Array(instances.iter().map(property).collect())
        };
        m.insert(name, v);
    }
    if ld {
        m.insert("@context".into(), json!(CORE_CONTEXT));
    }
    // More instances than one answer holds: 206 with the range returned (NGSI-LD's temporal
    // pagination); narrow timeAt/endTimeAt or use lastN for the rest.
    if truncated {
        let range = format!("date-time {}-{}/*", iso_ms(first), iso_ms(last));
        return Ok(answer(
            StatusCode::PARTIAL_CONTENT,
            Value::Object(m),
            ld,
            vec![("content-range", range)],
        ));
    }
    Ok(answer(StatusCode::OK, Value::Object(m), ld, Vec::new()))
}

/// A change as streamed: the entity's changed attributes, normalized.
pub fn change_json(c: &Change) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(c.entity));
    m.insert("type".into(), json!(c.kind.as_str()));
    for (name, obs) in &c.attrs {
        m.insert(name.clone(), property(obs));
    }
    m.insert("@context".into(), json!(CORE_CONTEXT));
    Value::Object(m)
}

/// `change` events carry the stream position as `id` (for `Last-Event-ID`); a client that
/// missed changes (fell behind, or resumed too late) gets `lagged`: re-read the entities, then
/// carry on.
fn sse_event(item: Item<Change>) -> SseEvent {
    match item {
        Item::Change(c) => SseEvent::default()
            .event("change")
            .id(c.seq.to_string())
            .data(change_json(&c).to_string()),
        Item::Lagged(missed) => SseEvent::default().event("lagged").data(
            json!({"missed": missed,
                   "detail": "changes were missed; re-read GET /ngsi-ld/v1/entities"})
            .to_string(),
        ),
    }
}

/// Follows the twin's changes of the wanted types and ids.
fn follow(
    twin: &Arc<Twin>,
    resume: Option<u64>,
    types: Option<HashSet<String>>,
    ids: Option<HashSet<String>>,
    permit: Option<OwnedSemaphorePermit>,
) -> Follow<Change> {
    let counted = twin.clone();
    Follow::new(
        twin.feed(),
        resume,
        move |c: &Change| {
            types.as_ref().is_none_or(|t| t.contains(c.kind.as_str()))
                && ids.as_ref().is_none_or(|i| i.contains(&c.entity))
        },
        move |n| {
            counted
                .counters
                .stream_lagged
                .fetch_add(n, Ordering::Relaxed);
        },
        permit,
    )
}

async fn stream(
    State(st): State<NgsiState>,
    headers: HeaderMap,
    Params(p, _): Params<StreamParams, Ngsi>,
) -> Result<Response, Problem> {
    let Ok(permit) = st.streams.clone().try_acquire_owned() else {
        return Err(Problem::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} change streams are open; retry later"),
        ));
    };
    let types = p
        .kind
        .as_deref()
        .map(|v| list(v).into_iter().map(str::to_string).collect());
    let ids =
        p.id.as_deref()
            .map(|v| list(v).into_iter().map(str::to_string).collect());
    let twin = st.twin()?;
    Ok(follow(twin, last_event_id(&headers), types, ids, Some(permit)).respond(sse_event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::twin::{Live, Rel};
    use std::collections::BTreeMap;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cam() -> Entity {
        let mut props = BTreeMap::new();
        props.insert("name".to_string(), json!("摄像机"));
        let mut rels = BTreeMap::new();
        rels.insert(
            "refTown".to_string(),
            Rel::One("urn:ngsi-ld:Town:yuexi:tiantang".into()),
        );
        let mut live = BTreeMap::new();
        live.insert(
            "status".to_string(),
            Live::new(Observed {
                value: json!("online"),
                observed_ms: 1_790_000_000_123,
            }),
        );
        Entity {
            id: "urn:ngsi-ld:Camera:yuexi:gw:cam".into(),
            kind: EntityType::Camera,
            location: Some(crate::platform::geo::Geometry::Point([116.36, 30.85])),
            props,
            rels,
            live,
        }
    }

    /// Sensors' changes from now on.
    fn stream_state(twin: &Arc<Twin>) -> Follow<Change> {
        follow(twin, None, Some(["Sensor".to_string()].into()), None, None)
    }

    /// Readings of the demo water-level sensor, one change each.
    fn readings(twin: &Twin, n: usize) {
        let mut b = crate::storage::store::WriteBatch::default();
        for i in 0..n {
            b.telemetry.push(csb_wire::Telemetry {
                v: 1,
                id: ulid::Ulid::new(),
                site: "yuexi".into(),
                device: "gw-demo-01".into(),
                source: "wl-underpass-01".into(),
                ts_ms: 1_790_000_000_000 + i as i64,
                metrics: [("water_level_cm".to_string(), i as f64)].into(),
            });
        }
        twin.apply(&crate::platform::twin::Input {
            batch: Arc::new(b),
            duplicates: Default::default(),
        });
    }

    fn sample_twin() -> Arc<Twin> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(crate::platform::county::DEFAULT_DIR);
        let c = crate::platform::county::County::load(&dir).unwrap();
        Arc::new(Twin::new(Some(&c), None, 86_400_000))
    }

    #[tokio::test]
    async fn a_lagging_stream_gets_lagged_and_carries_on_and_ends_on_close() {
        let twin = sample_twin();
        let mut s = stream_state(&twin);
        // More than the channel holds, while the client reads nothing: nobody waits on it.
        readings(&twin, crate::platform::twin::STREAM_CAPACITY + 10);
        match s.next().await {
            Some(Item::Lagged(Some(n))) => assert_eq!(n, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(twin.counters.stream_lagged.load(Ordering::Relaxed), 10);
        // Then the oldest change still held.
        match s.next().await {
            Some(Item::Change(c)) => {
                assert_eq!(c.attrs[0].1.value, json!(10.0));
            }
            other => panic!("{other:?}"),
        }
        // Resuming from a position older than the recent buffer says so first.
        let (recent, missed) = twin.feed().recent_after(0);
        assert!(missed);
        assert_eq!(
            recent.len(),
            crate::platform::twin::RECENT_CAPACITY.min(crate::platform::twin::STREAM_CAPACITY + 10)
        );
        let last = recent[recent.len() - 2].seq;
        let (recent, missed) = twin.feed().recent_after(last);
        assert!(!missed);
        assert_eq!(recent.len(), 1);
        twin.close_streams();
        let mut s = stream_state(&twin);
        assert!(s.next().await.is_none(), "a closed twin ends streams");
    }

    #[test]
    fn twin_reads_need_the_viewer_role() {
        use crate::http::tokens::Role;
        use crate::http::{access_for, Access};
        use axum::http::Method;
        for p in [
            "/ngsi-ld/v1/entities",
            "/ngsi-ld/v1/entities/urn:ngsi-ld:Camera:yuexi:gw:cam",
            "/ngsi-ld/v1/temporal/entities/urn:x:y",
            "/ngsi-ld/v1/types",
            "/api/v1/twin/stream",
        ] {
            assert_eq!(
                access_for(&Method::GET, p),
                Access::Role(Role::Viewer),
                "{p}"
            );
        }
    }

    #[test]
    fn normalized_and_key_values_rendering() {
        let e = cam();
        let n = render(&e, None, false, true);
        assert_eq!(
            n,
            json!({
                "id": "urn:ngsi-ld:Camera:yuexi:gw:cam",
                "type": "Camera",
                "@context": CORE_CONTEXT,
                "name": {"type": "Property", "value": "摄像机"},
                "refTown": {"type": "Relationship", "object": "urn:ngsi-ld:Town:yuexi:tiantang"},
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [116.36, 30.85]}},
                "status": {"type": "Property", "value": "online", "observedAt": "2026-09-21T14:13:20.123Z"},
            })
        );
        let attrs: BTreeSet<String> = ["status".to_string()].into();
        let kv = render(&e, Some(&attrs), true, false);
        assert_eq!(
            kv,
            json!({"id": e.id, "type": "Camera", "status": "online"})
        );
    }

    #[test]
    fn temporal_range_parses_and_names_parameters() {
        let r = temporal_range(&pairs(&[
            ("timerel", "between"),
            ("timeAt", "2026-01-01T00:00:00Z"),
            ("endTimeAt", "2026-01-02T00:00:00Z"),
            ("lastN", "5"),
        ]))
        .unwrap();
        assert_eq!(r.from_ms, Some(1_767_225_600_000));
        assert_eq!(r.to_ms, Some(1_767_312_000_000));
        assert_eq!(r.last_n, Some(5));
        let r = temporal_range(&pairs(&[("timerel", "after"), ("timeAt", "1000")])).unwrap();
        assert_eq!((r.from_ms, r.to_ms), (Some(1001), None));
        for (q, param) in [
            (
                vec![("timerel", "between"), ("timeAt", "1000")],
                "endTimeAt",
            ),
            (vec![("timerel", "before")], "timeAt"),
            (vec![("timeAt", "1000")], "timerel"),
            (vec![("timerel", "during"), ("timeAt", "1000")], "timerel"),
            (
                vec![
                    ("timerel", "between"),
                    ("timeAt", "2000"),
                    ("endTimeAt", "1000"),
                ],
                "endTimeAt",
            ),
            (
                vec![("timerel", "after"), ("timeAt", "yesterday")],
                "timeAt",
            ),
            (vec![("lastN", "0")], "lastN"),
        ] {
            let e = temporal_range(&pairs(&q)).unwrap_err();
            assert!(
                e.detail.contains(&format!("`{param}`")),
                "{q:?}: {}",
                e.detail
            );
        }
    }

    #[test]
    fn entity_filter_names_bad_parameters() {
        for (q, param) in [
            (vec![("georel", "near;maxDistance==10")], "geometry"),
            (
                vec![("georel", "near;maxDistance==10"), ("geometry", "Point")],
                "coordinates",
            ),
            (vec![("geometry", "Point")], "geometry"),
            (vec![("q", "a=1")], "q"),
            (vec![("idPattern", "(")], "idPattern"),
            (vec![("attrs", "a.b")], "attrs"),
            (
                vec![
                    ("georel", "near;maxDistance==10"),
                    ("geometry", "Polygon"),
                    ("coordinates", "[[[116,30],[117,30],[117,31],[116,30]]]"),
                ],
                "geometry",
            ),
        ] {
            let e = EntityFilter::parse(&pairs(&q)).err().unwrap();
            assert!(
                e.detail.contains(&format!("`{param}`")),
                "{q:?}: {}",
                e.detail
            );
            assert_eq!(e.kind, "BadRequestData");
        }
        let f = EntityFilter::parse(&pairs(&[
            ("type", "Camera,Sensor"),
            ("q", "status==\"online\""),
            ("idPattern", "^urn:ngsi-ld:Camera:yuexi:"),
        ]))
        .unwrap();
        assert!(f.matches(&cam()));
        let f = EntityFilter::parse(&pairs(&[("type", "Sensor")])).unwrap();
        assert!(!f.matches(&cam()));
    }
}
