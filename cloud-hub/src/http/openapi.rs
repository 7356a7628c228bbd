//! The OpenAPI 3.1 document of the HTTP API, generated from the code with aide.
//!
//! Every route is registered with `aide`'s `api_route` next to its documentation (`*_docs`
//! functions in each resource's module), so the document cannot list a route the router lacks
//! or miss one it has. Parameters come from the handlers' typed query structs
//! ([`crate::http::query::Params`]), bodies from their return types, and every schema from
//! `schemars` — the same derives `csb-wire` uses for `schemas/*.json`, so the wire types appear
//! here exactly as in those files. What a type cannot say (error statuses, security, headers,
//! other content types) each `*_docs` function adds with the helpers below.
//!
//! Why aide and not utoipa: the wire types already derive `schemars::JsonSchema` (JSON Schema
//! 2020-12, which is OpenAPI 3.1's schema dialect); aide takes those schemas as they are, while
//! utoipa has its own `ToSchema` derive and schema model, so every wire type would need a second
//! derive restating its attributes (ULID patterns, renames) and two schemas of one type could
//! drift apart. aide also documents each operation from its handler's extractor and return
//! types, and takes handlers generic over the store (`events::<S>`), which utoipa-axum's
//! `routes!` macro does not. The cost: aide's schemars-1 line is a pre-release
//! (`=0.16.0-alpha.4`, pinned exactly).
//!
//! Served at `GET /api/v1/openapi.json` (open, like health); `cloud-hub openapi` prints it and
//! `make openapi` writes `docs/openapi.json`, which a test keeps in step with the code.

use std::sync::Arc;

use aide::generate::GenContext;
use aide::openapi::{
    self, Components, Info, MediaType, OpenApi, Operation, ReferenceOr, Response, SchemaObject,
    SecurityScheme, StatusCode, Tag,
};
use aide::transform::TransformOperation;
use aide::OperationOutput;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use indexmap::IndexMap;
use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::http::error::ApiError;

/// The security scheme of bearer tokens (`[auth] http = "required"`).
pub const BEARER: &str = "bearerToken";
/// The security scheme of signed evidence uploads.
pub const DEVICE_SIGNATURE: &str = "deviceSignature";
/// A device's signature of a model download (`csb_wire::sign::sign_download`).
pub const DEVICE_DOWNLOAD: &str = "deviceDownloadSignature";
/// The web page's session cookie (`POST /api/v1/session`), wherever a bearer token is taken.
pub const SESSION_COOKIE: &str = "sessionCookie";

/// Sets up aide's (thread-local) schema generator for one document: JSON Schema 2020-12, as
/// OpenAPI 3.1 reads it, with named schemas under `#/components/schemas`.
pub fn begin() {
    aide::generate::infer_responses(true);
    aide::generate::extract_schemas(true);
    aide::generate::in_context(|ctx| {
        ctx.schema = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "#/components/schemas/".into();
        }));
    });
}

/// The document before its paths: info, tags, security schemes.
pub fn base() -> OpenApi {
    let mut components = Components::default();
    components.security_schemes.insert(
        BEARER.into(),
        ReferenceOr::Item(SecurityScheme::Http {
            scheme: "bearer".into(),
            bearer_format: Some("csb_… (cloud-hub token add)".into()),
            description: Some(
                "With `[auth] http = \"required\"`: a token from `cloud-hub token add`; reads \
                 need role viewer, writes operator, management admin. With `http = \"off\"` (the \
                 default) no token is needed."
                    .into(),
            ),
            extensions: IndexMap::default(),
        }),
    );
    components.security_schemes.insert(
        DEVICE_SIGNATURE.into(),
        ReferenceOr::Item(SecurityScheme::ApiKey {
            location: openapi::ApiKeyLocation::Header,
            name: "X-Csb-Signature".into(),
            description: Some(
                "With `[auth] http = \"required\"`: 64 lowercase hex digits, HMAC-SHA256 with the \
                 uploading device's key over `PUT /api/v1/snapshots/{id}\\n{X-Csb-Device}\\n\
                 {X-Csb-Event}\\n` followed by the body (docs/wire.md, `csb_wire::sign::\
                 sign_upload`). Bearer tokens are not taken for uploads."
                    .into(),
            ),
            extensions: IndexMap::default(),
        }),
    );
    components.security_schemes.insert(
        DEVICE_DOWNLOAD.into(),
        ReferenceOr::Item(SecurityScheme::ApiKey {
            location: openapi::ApiKeyLocation::Header,
            name: "X-Csb-Signature".into(),
            description: Some(
                "Model file downloads by a device, instead of a bearer token: 64 lowercase hex \
                 digits, HMAC-SHA256 with the device's key over `GET {path}\\n{X-Csb-Device}\\n\
                 {X-Csb-Timestamp}\\n` (`csb_wire::sign::sign_download`), with headers \
                 `X-Csb-Device: {site}/{device}` and `X-Csb-Timestamp: <unix ms>` within 5 \
                 minutes of the hub's clock."
                    .into(),
            ),
            extensions: IndexMap::default(),
        }),
    );
    components.security_schemes.insert(
        SESSION_COOKIE.into(),
        ReferenceOr::Item(SecurityScheme::ApiKey {
            location: openapi::ApiKeyLocation::Cookie,
            name: crate::http::sessions::COOKIE.into(),
            description: Some(
                "The web page's session (`POST /api/v1/session` with a token): taken wherever a \
                 bearer token is, with the token's role. Writes with it must come from the \
                 hub's own origin (`Origin`)."
                    .into(),
            ),
            extensions: IndexMap::default(),
        }),
    );
    let tag = |name: &str, description: &str| Tag {
        name: name.into(),
        description: Some(description.into()),
        ..Tag::default()
    };
    OpenApi {
        info: Info {
            title: "City Super Brain hub API".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some(
                "The cloud hub's HTTP API: stored events, telemetry and evidence, the quarantine \
                 of refused messages, device status, the county model and inventory, health and \
                 metrics (REST, errors `{\"error\": \"…\"}`), and the county's digital twin as \
                 NGSI-LD (errors as ProblemDetails). Generated from the code; see \
                 docs/wire.md for the protocol and docs/twin.md for the twin."
                    .into(),
            ),
            ..Info::default()
        },
        tags: vec![
            tag(
                "events",
                "Events from edge agents (detections and rule events)",
            ),
            tag(
                "telemetry",
                "Telemetry as received, and its series and rollups",
            ),
            tag("evidence", "Evidence JPEGs of rule events"),
            tag("quarantine", "Messages ingest refused, and why"),
            tag(
                "devices",
                "Device status, the county model and the inventory (家底)",
            ),
            tag("twin", "The county's digital twin (NGSI-LD)"),
            tag(
                "open311",
                "Open311 GeoReport v2 for citizen apps: services (the governance categories) \
                 and requests (citizens' cases); errors as the spec's list, JSON or XML",
            ),
            tag(
                "cases",
                "The governance workflow: cases, their actions, evaluation and change stream",
            ),
            tag(
                "session",
                "The web page's sign-in (a token exchanged for a session cookie)",
            ),
            tag(
                "live",
                "The web page's live stream: new events, device states and case changes",
            ),
            tag(
                "models",
                "The model warehouse: detection models, their files and self-tests, for rollouts",
            ),
            tag("operations", "Health, metrics and this document"),
        ],
        components: Some(components),
        ..OpenApi::default()
    }
}

/// The document as served and committed: pretty JSON and a final newline.
pub fn to_json(api: &OpenApi) -> String {
    let mut v = serde_json::to_value(api).expect("the OpenAPI document serialises");
    // aide writes `openapi: 3.1.0` itself; keep the components sorted for stable diffs.
    if let Some(schemas) = v
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        let sorted: serde_json::Map<String, serde_json::Value> = std::mem::take(schemas)
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        *schemas = sorted;
    }
    serde_json::to_string_pretty(&v).expect("JSON serialises") + "\n"
}

/// The document, as the route serves it.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

/// The OpenAPI 3.1 document itself.
pub struct DocumentJson(Arc<String>);

impl IntoResponse for DocumentJson {
    fn into_response(self) -> axum::response::Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.as_str().to_owned(),
        )
            .into_response()
    }
}

impl OperationOutput for DocumentJson {
    type Inner = ();
    fn operation_response(_: &mut GenContext, _: &mut Operation) -> Option<Response> {
        Some(content(
            "The OpenAPI 3.1 document",
            "application/json",
            json_schema!({"type": "object", "required": ["openapi", "info", "paths"]}),
        ))
    }
    fn inferred_responses(
        ctx: &mut GenContext,
        op: &mut Operation,
    ) -> Vec<(Option<StatusCode>, Response)> {
        Self::operation_response(ctx, op)
            .map(|r| (Some(StatusCode::Code(200)), r))
            .into_iter()
            .collect()
    }
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document(Extension(doc): Extension<Document>) -> DocumentJson {
    DocumentJson(doc.0)
}

pub(crate) fn document_docs(op: TransformOperation) -> TransformOperation {
    op.id("openapi")
        .tag("operations")
        .summary("This document")
        .description("Open without a token, like health: no data in it.")
}

/// A response with one content type and schema.
pub fn content(description: &str, media_type: &str, schema: Schema) -> Response {
    Response {
        description: description.into(),
        content: IndexMap::from_iter([(
            media_type.to_string(),
            MediaType {
                schema: Some(SchemaObject {
                    json_schema: schema,
                    example: None,
                    external_docs: None,
                }),
                ..MediaType::default()
            },
        )]),
        ..Response::default()
    }
}

/// The schema of `T` in the document's generator (a `$ref` for named types).
pub fn schema_of<T: JsonSchema>() -> Schema {
    aide::generate::in_context(|ctx| ctx.schema.subschema_for::<T>())
}

/// Sets the response for `status`.
pub fn respond(mut op: TransformOperation, status: u16, r: Response) -> TransformOperation {
    op.inner_mut()
        .responses
        .get_or_insert_with(Default::default)
        .responses
        .insert(StatusCode::Code(status), ReferenceOr::Item(r));
    op
}

/// A response header (`required`: always sent with that response).
pub fn with_header(mut r: Response, name: &str, description: &str, required: bool) -> Response {
    r.headers.insert(
        name.to_string(),
        ReferenceOr::Item(openapi::Header {
            description: Some(description.into()),
            style: openapi::HeaderStyle::Simple,
            required,
            deprecated: None,
            format: openapi::ParameterSchemaOrContent::Schema(SchemaObject {
                json_schema: json_schema!({"type": "string"}),
                example: None,
                external_docs: None,
            }),
            example: None,
            examples: IndexMap::default(),
            extensions: IndexMap::default(),
        }),
    );
    r
}

/// The REST API's error body, for `status`.
pub fn error_response(description: &str) -> Response {
    content(
        description,
        "application/json",
        schema_of::<crate::http::error::ErrorBody>(),
    )
}

/// REST errors `{"error": "…"}` with these statuses and descriptions.
pub fn errors<'a>(mut op: TransformOperation<'a>, list: &[(u16, &str)]) -> TransformOperation<'a> {
    for (status, description) in list {
        op = respond(op, *status, error_response(description));
    }
    op
}

/// What any store-backed REST operation may answer besides its own: a store failure (500) and
/// too many concurrent queries or a query over its time limit (503).
pub fn store_errors(op: TransformOperation) -> TransformOperation {
    errors(
        op,
        &[
            (500, "The store failed (logged)"),
            (
                503,
                "Too many concurrent store calls, or the query took longer than its limit",
            ),
        ],
    )
}

/// A change that needs a bearer token of role operator or higher: documented like
/// [`viewer`] (the same schemes), plus its 403 for lower roles.
pub fn operator(op: TransformOperation) -> TransformOperation {
    errors(
        viewer(op),
        &[(
            403,
            "The token's role may not make this change (operator or admin)",
        )],
    )
}

/// A read that needs a bearer token of role viewer or higher with `[auth] http = "required"`.
pub fn viewer(op: TransformOperation) -> TransformOperation {
    let op = op
        .security_requirement(BEARER)
        .security_requirement(SESSION_COOKIE);
    respond(
        op,
        401,
        with_header(
            error_response(
                "No, a malformed or an unknown bearer token (with `[auth] http = \"required\"`)",
            ),
            "WWW-Authenticate",
            "The bearer challenge (RFC 6750)",
            true,
        ),
    )
}

impl OperationOutput for ApiError {
    type Inner = crate::http::error::ErrorBody;
    fn operation_response(_: &mut GenContext, _: &mut Operation) -> Option<Response> {
        Some(error_response("An error naming what was wrong"))
    }
}

/// The whole document of routes `routes` registers, from a fresh generator.
pub fn document_of<S: Clone + Send + Sync + 'static>(
    routes: impl FnOnce() -> aide::axum::ApiRouter<S>,
) -> OpenApi {
    begin();
    let mut api = base();
    let _ = routes().finish_api(&mut api);
    api
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axum::http::Method;
    use serde_json::Value;

    use crate::http::auth::{access_for, Access};
    use crate::http::tokens::Role;

    fn document() -> Value {
        serde_json::to_value(crate::http::openapi()).unwrap()
    }

    /// docs/openapi.json must be what the code generates.
    #[test]
    fn committed_document_is_current() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let text = super::to_json(&crate::http::openapi());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is out of date: regenerate it with `make openapi` (cloud-hub openapi --out \
             docs/openapi.json)",
            path.display()
        );
    }

    /// Each operation's security is what the access policy enforces: open routes need nothing,
    /// uploads a device signature, the rest a bearer token; each secured one documents its 401.
    #[test]
    fn security_follows_the_access_policy() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Ok(m) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let concrete = path.replace("{id}", "01J0000000000000000000000Z");
                let schemes: Vec<&str> = op["security"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .flat_map(|r| r.as_object().unwrap().keys())
                            .map(String::as_str)
                            .collect()
                    })
                    .unwrap_or_default();
                let want: Vec<&str> = match access_for(&m, &concrete) {
                    Access::Open => vec![],
                    Access::Device => vec![super::DEVICE_SIGNATURE],
                    Access::Role(Role::Viewer) => vec![super::BEARER, super::SESSION_COOKIE],
                    Access::DeviceOrRole(Role::Viewer) => {
                        vec![super::BEARER, super::SESSION_COOKIE, super::DEVICE_DOWNLOAD]
                    }
                    Access::Role(Role::Operator) => {
                        assert!(op["responses"]["403"].is_object(), "{method} {path}: 403");
                        vec![super::BEARER, super::SESSION_COOKIE]
                    }
                    other => panic!("{method} {path}: {other:?} is not documented yet"),
                };
                assert_eq!(schemes, want, "{method} {path}");
                if !want.is_empty() {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
                }
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path}: operationId"
                );
                seen += 1;
            }
        }
        assert!(seen >= 21, "{seen} operations");
    }

    /// Every operation documents its success and, where it takes parameters, their refusal.
    #[test]
    fn operations_document_parameters_and_errors() {
        let doc = document();
        let op = &doc["paths"]["/api/v1/events"]["get"];
        // A query string has no null.
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    assert!(!p["schema"].to_string().contains("null"), "{p}");
                }
            }
        }
        let mut names: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut want = [
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
        want.sort_unstable();
        assert_eq!(names, want);
        let limit = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .map(|p| &p["schema"])
            .unwrap();
        assert_eq!(
            (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
            (Some(1), Some(1000))
        );
        for status in ["200", "400", "401", "500", "503"] {
            assert!(op["responses"][status].is_object(), "{status}");
        }
        // Required where the handler requires them.
        let q = &doc["paths"]["/api/v1/telemetry/series/query"]["get"]["parameters"];
        for p in q.as_array().unwrap() {
            let required =
                ["site", "device", "source", "metric"].contains(&p["name"].as_str().unwrap());
            assert_eq!(p["required"].as_bool().unwrap_or(false), required, "{p}");
        }
        // The wire types are the same schemas as schemas/*.json.
        let event = &doc["components"]["schemas"]["Event"];
        assert!(
            event["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "ts_ms"),
            "{event}"
        );
        // Errors share one shape.
        let err = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(err["required"], serde_json::json!(["error"]));
    }
}
