//! The model warehouse over HTTP ([`crate::fleet::models`]):
//!
//! - `GET /api/v1/models` — every registered model version;
//! - `PUT /api/v1/models/{name}/{version}` — register a manifest (201 new, 200 the same again,
//!   409 a different one); `GET` the same path — one model; `POST …/retire` — retire it;
//! - `PUT /api/v1/models/{name}/{version}/files/{kind}` — upload the ONNX file (`model`) or the
//!   self-test image (`selftest`), streamed (never buffered whole), checked against the manifest;
//! - `GET` the same path — download it, with single-range requests (`Range`, `If-Range`, 206,
//!   416), to viewers or to a device that signs the request (`crate::http::auth`).

use std::io::SeekFrom;

use aide::openapi::{
    MediaType, Parameter, ParameterData, ParameterSchemaOrContent, ReferenceOr, RequestBody,
    SchemaObject,
};
use aide::transform::TransformOperation;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use csb_wire::model::ModelManifest;
use indexmap::IndexMap;
use schemars::{json_schema, JsonSchema};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::fleet::models::{FileKind, Registered, StoredModel, Warehouse, WarehouseError};
use crate::http::cases::{blocking, JsonBody};
use crate::http::error::{clip, path_of, ApiError};
use crate::http::openapi::{
    content, error_response, errors, operator, respond, schema_of, viewer, with_header,
};
use crate::http::state::ApiState;
use crate::http::tokens::TokenInfo;
use crate::storage::store::Store;

/// `{name}/{version}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ModelPath {
    /// Model name, e.g. `yolox_nano` (letters, digits, `_`, `-`, `.`; 1–64).
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        example = &"yolox_nano"
    )]
    pub name: String,
    /// Version, e.g. `2026.12.1` (letters, digits, `_`, `-`, `.`; 1–32).
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,31}$"),
        example = &"1.0.0"
    )]
    pub version: String,
}

/// `{name}/{version}/files/{kind}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ModelFilePath {
    /// Model name.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        example = &"yolox_nano"
    )]
    pub name: String,
    /// Version.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,31}$"),
        example = &"1.0.0"
    )]
    pub version: String,
    /// `model` (the ONNX file) or `selftest` (the self-test image).
    pub kind: FileKind,
}

/// Every registered model version.
#[derive(Serialize, JsonSchema)]
pub struct ModelList {
    pub count: usize,
    pub models: Vec<StoredModel>,
}

pub(crate) fn warehouse_of<S>(st: &ApiState<S>) -> Result<std::sync::Arc<Warehouse>, ApiError> {
    st.models.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model warehouse is not running",
        )
    })
}

/// The status each warehouse error answers.
pub(crate) fn warehouse_error(e: WarehouseError) -> ApiError {
    let status = match &e {
        WarehouseError::BadPath(_) => StatusCode::BAD_REQUEST,
        WarehouseError::Invalid(_) | WarehouseError::Mismatch { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        WarehouseError::Unknown { .. } | WarehouseError::NoFile { .. } => StatusCode::NOT_FOUND,
        WarehouseError::Conflict { .. }
        | WarehouseError::Retired { .. }
        | WarehouseError::AwaitingFiles { .. } => StatusCode::CONFLICT,
        WarehouseError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        WarehouseError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        WarehouseError::Body { .. } => StatusCode::BAD_REQUEST,
        WarehouseError::Io { .. } | WarehouseError::Corrupt { .. } => {
            tracing::error!("{e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    ApiError::new(status, e.to_string())
}

fn by(who: Option<Extension<TokenInfo>>) -> String {
    who.map_or_else(|| "anonymous".to_string(), |Extension(t)| t.name)
}

fn model_response(description: &str) -> aide::openapi::Response {
    content(description, "application/json", schema_of::<StoredModel>())
}

pub(crate) fn list_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listModels")
        .tag("models")
        .summary("Every registered model version: manifest, state, who registered it");
    errors(viewer(op), &[(503, "The model warehouse is not running")])
}

pub(crate) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<ModelList>, ApiError> {
    let models = warehouse_of(&st)?.list();
    Ok(Json(ModelList {
        count: models.len(),
        models,
    }))
}

pub(crate) fn get_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getModel")
        .tag("models")
        .summary("One model version: its manifest, state and which files are uploaded");
    errors(
        viewer(op),
        &[
            (400, "The name or version is not valid"),
            (404, "No such model version"),
            (503, "The model warehouse is not running"),
        ],
    )
}

pub(crate) async fn get<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Result<Json<StoredModel>, ApiError> {
    let p = path_of(path)?;
    let w = warehouse_of(&st)?;
    w.get(&p.name, &p.version)
        .map(Json)
        .map_err(warehouse_error)
}

pub(crate) fn register_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("registerModel")
        .tag("models")
        .summary("Register a model version: its manifest (then upload its two files)")
        .description(
            "The manifest is checked (the message names the field at fault) and stored durably. \
             The same manifest again is answered 200 and changes nothing; a different one under \
             the same name and version 409: versions are immutable. The body's `name` and \
             `version` must be the path's.",
        );
    let op = respond(
        op,
        201,
        with_header(
            model_response("Registered, awaiting its files"),
            "Location",
            "`/api/v1/models/{name}/{version}`",
            true,
        ),
    );
    let op = respond(
        op,
        200,
        model_response("The same manifest was already registered"),
    );
    errors(
        operator(op),
        &[
            (400, "The name or version in the path is not valid"),
            (
                409,
                "Another manifest is registered under this name and version",
            ),
            (413, "The body is over the request size limit"),
            (415, "`Content-Type` is not `application/json`"),
            (
                422,
                "A body field is wrong or the manifest is invalid (the message names the field)",
            ),
            (500, "The record could not be stored (logged)"),
            (
                503,
                "The model warehouse is not running, or too many requests at once",
            ),
        ],
    )
}

pub(crate) async fn register<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<ModelPath>, PathRejection>,
    JsonBody(manifest): JsonBody<ModelManifest>,
) -> Result<Response, ApiError> {
    let p = path_of(path)?;
    crate::fleet::models::check_key(&p.name, &p.version).map_err(warehouse_error)?;
    let w = warehouse_of(&st)?;
    for (field, body, path) in [
        ("name", &manifest.name, &p.name),
        ("version", &manifest.version, &p.version),
    ] {
        if body != path {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "body field `{field}` is `{}`, the path's is `{path}`",
                    clip(body)
                ),
            ));
        }
    }
    let by = by(who);
    let (outcome, rec) = blocking(&st.store_slots, "model registration", move || {
        w.register(manifest, &by, csb_wire::now_ms())
            .map_err(warehouse_error)
    })
    .await?;
    Ok(match outcome {
        Registered::Created => {
            tracing::info!(model = %rec.manifest.key(), by = %rec.registered_by, "model registered");
            let location = format!("/api/v1/models/{}/{}", p.name, p.version);
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(rec),
            )
                .into_response()
        }
        Registered::Unchanged => Json(rec).into_response(),
    })
}

pub(crate) fn retire_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("retireModel")
        .tag("models")
        .summary("Retire a model version: no new assignments; its files stay for devices that run it or roll back to it")
        .description("Retiring a retired model changes nothing.");
    let op = respond(op, 200, model_response("Retired"));
    errors(
        operator(op),
        &[
            (400, "The name or version is not valid"),
            (404, "No such model version"),
            (500, "The record could not be stored (logged)"),
            (
                503,
                "The model warehouse is not running, or too many requests at once",
            ),
        ],
    )
}

pub(crate) async fn retire<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Result<Json<StoredModel>, ApiError> {
    let p = path_of(path)?;
    let w = warehouse_of(&st)?;
    let by = by(who);
    let rec = blocking(&st.store_slots, "model retirement", move || {
        w.retire(&p.name, &p.version, &by, csb_wire::now_ms())
            .map_err(warehouse_error)
    })
    .await?;
    tracing::info!(model = %rec.manifest.key(), "model retired");
    Ok(Json(rec))
}

fn binary_schema() -> SchemaObject {
    SchemaObject {
        json_schema: json_schema!({"type": "string", "format": "binary"}),
        example: None,
        external_docs: None,
    }
}

pub(crate) fn upload_docs(mut op: TransformOperation) -> TransformOperation {
    op.inner_mut().request_body = Some(ReferenceOr::Item(RequestBody {
        description: Some(
            "The file's bytes: exactly the size and sha256 the manifest declares (`bytes` and \
             `sha256` for `model`, `selftest.image_bytes` and `selftest.image_sha256` for \
             `selftest`). `Content-Type`, when given, must be `application/octet-stream`."
                .into(),
        ),
        content: IndexMap::from_iter([(
            "application/octet-stream".to_string(),
            MediaType {
                schema: Some(binary_schema()),
                ..MediaType::default()
            },
        )]),
        required: true,
        extensions: IndexMap::default(),
    }));
    let op = op
        .id("uploadModelFile")
        .tag("models")
        .summary("Upload a model's ONNX file (`model`) or its self-test image (`selftest`)")
        .description(
            "Streamed to disk while hashed, refused as soon as it exceeds the declared size, \
             checked against the manifest and only then put in place (durably, before the \
             answer); on any mismatch nothing is kept. Once both files are in, the model is \
             `ready`. Uploading the same file again replaces it with the same bytes.",
        );
    let op = respond(
        op,
        200,
        model_response("Stored; the model's record after it"),
    );
    errors(
        operator(op),
        &[
            (
                400,
                "The name, version or kind is not valid, or the body broke off",
            ),
            (404, "No such model version"),
            (409, "The model is retired: its files cannot be replaced"),
            (413, "The body is longer than the manifest declares"),
            (415, "`Content-Type` is not `application/octet-stream`"),
            (
                422,
                "The body's size or sha256 is not the manifest's (the message names both)",
            ),
            (500, "The file could not be stored (logged)"),
            (
                503,
                "The model warehouse is not running, or too many uploads at once",
            ),
        ],
    )
}

pub(crate) async fn upload<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<ModelFilePath>, PathRejection>,
    req: Request,
) -> Result<Json<StoredModel>, ApiError> {
    let p = path_of(path)?;
    let w = warehouse_of(&st)?;
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let mime = ct.to_str().unwrap_or("").split(';').next().unwrap_or("");
        if !mime.trim().eq_ignore_ascii_case("application/octet-stream") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "header `Content-Type` must be application/octet-stream, not `{}`",
                    clip(&String::from_utf8_lossy(ct.as_bytes()))
                ),
            ));
        }
    }
    let declared = w
        .declared(&p.name, &p.version, p.kind)
        .map_err(warehouse_error)?;
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = length.filter(|len| *len > declared) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{}@{}: the {} body is {len} bytes, the manifest declares {declared}",
                p.name,
                p.version,
                p.kind.as_str()
            ),
        ));
    }
    let body = req.into_body().into_data_stream();
    let rec = w
        .upload(&p.name, &p.version, p.kind, body)
        .await
        .map_err(warehouse_error)?;
    tracing::info!(model = %rec.manifest.key(), file = p.kind.file_name(), state = ?rec.state, "model file uploaded");
    Ok(Json(rec))
}

fn header_param(name: &str, description: &str) -> ReferenceOr<Parameter> {
    ReferenceOr::Item(Parameter::Header {
        parameter_data: ParameterData {
            name: name.into(),
            description: Some(description.into()),
            required: false,
            format: ParameterSchemaOrContent::Schema(SchemaObject {
                json_schema: json_schema!({"type": "string"}),
                example: None,
                external_docs: None,
            }),
            extensions: IndexMap::default(),
            deprecated: None,
            example: None,
            examples: IndexMap::default(),
            explode: None,
        },
        style: aide::openapi::HeaderStyle::Simple,
    })
}

pub(crate) fn download_docs(mut op: TransformOperation) -> TransformOperation {
    let o = op.inner_mut();
    o.parameters.push(header_param(
        "Range",
        "One byte range: `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`; anything else \
         (several ranges, other units) is ignored and the whole file is sent",
    ));
    o.parameters.push(header_param(
        "If-Range",
        "The `ETag` the client's partial copy came from: the range is served only if the file \
         is still that one, else the whole file",
    ));
    let file = |description: &str| aide::openapi::Response {
        description: description.into(),
        content: IndexMap::from_iter([(
            "application/octet-stream".to_string(),
            MediaType {
                schema: Some(binary_schema()),
                ..MediaType::default()
            },
        )]),
        ..aide::openapi::Response::default()
    };
    let common = |r| {
        let r = with_header(r, "Accept-Ranges", "`bytes`", true);
        with_header(r, "ETag", "The file's sha256 in quotes", true)
    };
    let op = op
        .id("downloadModelFile")
        .tag("models")
        .summary("Download a model's ONNX file (`model`) or its self-test image (`selftest`)")
        .description(
            "For viewers, and for the devices that run the model (a signed request: \
             `X-Csb-Device`, `X-Csb-Timestamp`, `X-Csb-Signature`). Retired models' files are \
             still served. Resumable: one byte range per request.",
        );
    let op = respond(op, 200, common(file("The whole file")));
    let op = respond(
        op,
        206,
        with_header(
            common(file("The requested range")),
            "Content-Range",
            "`bytes FIRST-LAST/SIZE`",
            true,
        ),
    );
    let op = respond(
        op,
        416,
        with_header(
            error_response("The range starts at or past the end of the file"),
            "Content-Range",
            "`bytes */SIZE`",
            true,
        ),
    );
    errors(
        viewer(op).security_requirement(crate::http::openapi::DEVICE_DOWNLOAD),
        &[
            (400, "The name, version or kind is not valid"),
            (
                404,
                "No such model version, or the file is not uploaded yet",
            ),
            (500, "The file could not be read (logged)"),
            (503, "The model warehouse is not running"),
        ],
    )
}

/// A range that starts at or past the end of the file (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A `Range` header's one range, inclusive, for a file of `len` bytes: `Ok(None)` when the
/// whole file is to be sent (no header, or one this server ignores), `Err(Unsatisfiable)` when
/// the range cannot be satisfied (416).
pub fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", n) => match num(n) {
            None => Ok(None),
            Some(0) => Err(Unsatisfiable),
            Some(_) if len == 0 => Err(Unsatisfiable),
            Some(n) => Ok(Some((len.saturating_sub(n), len - 1))),
        },
        (a, "") => match num(a) {
            None => Ok(None),
            Some(a) if a >= len => Err(Unsatisfiable),
            Some(a) => Ok(Some((a, len - 1))),
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    Err(Unsatisfiable)
                } else {
                    Ok(Some((a, b.min(len - 1))))
                }
            }
            _ => Ok(None),
        },
    }
}

const CHUNK: usize = 64 * 1024;

pub(crate) async fn download<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<ModelFilePath>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = path_of(path)?;
    let w = warehouse_of(&st)?;
    let (file, rec) = w
        .file(&p.name, &p.version, p.kind)
        .map_err(warehouse_error)?;
    let (sha, _) = p.kind.expected(&rec.manifest);
    let etag = format!("\"{sha}\"");
    let read_err = |e: std::io::Error| {
        tracing::error!(file = %file.display(), "model download: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: cannot read {}", rec.manifest.key(), p.kind.file_name()),
        )
    };
    let mut f = tokio::fs::File::open(&file).await.map_err(read_err)?;
    let len = f.metadata().await.map_err(read_err)?.len();
    let if_range_ok = match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag),
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if if_range_ok => parse_range(v, len),
        _ => Ok(None),
    };
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let (status, start, count) = match range {
        Err(Unsatisfiable) => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("header `Range`: the file has {len} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    if start > 0 {
        f.seek(SeekFrom::Start(start)).await.map_err(read_err)?;
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    let reader = Some(f.take(count));
    let stream = futures_util::stream::unfold(reader, |r| async move {
        let mut r = r?;
        let mut buf = vec![0u8; CHUNK];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((status, h, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::{parse_range, Unsatisfiable};

    #[test]
    fn ranges() {
        let r = |v: &str| parse_range(v, 100);
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-200"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=50-"), Ok(Some((50, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-1000"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=100-"), Err(Unsatisfiable));
        assert_eq!(r("bytes=100-200"), Err(Unsatisfiable));
        assert_eq!(r("bytes=-0"), Err(Unsatisfiable));
        // Ignored: the whole file.
        for v in [
            "",
            "items=0-1",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(r(v), Ok(None), "{v}");
        }
        assert_eq!(parse_range("bytes=-5", 0), Err(Unsatisfiable));
    }
}
