//! Evidence JPEGs: `PUT /api/v1/snapshots/{id}` (an edge agent uploads one, durably, before the
//! answer) and `GET /api/v1/snapshots/{id}`. An event's own snapshot is served by
//! `crate::http::events`.

use std::time::Duration;

use aide::openapi::{
    MediaType, Parameter, ParameterData, ParameterSchemaOrContent, ReferenceOr, RequestBody,
    SchemaObject,
};
use aide::transform::TransformOperation;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use csb_wire::sign::verify_upload;
use indexmap::IndexMap;
use schemars::json_schema;
use schemars::JsonSchema;
use serde::Serialize;
use ulid::Ulid;

use crate::http::auth::{upload_credentials, CHALLENGE_SIGNATURE, DEVICE_HEADER, EVENT_HEADER};
use crate::http::error::{clip, parse_id, ApiError, IdPath};
use crate::http::openapi::{
    content, error_response, errors, respond, schema_of, store_errors, viewer, with_header,
    DEVICE_SIGNATURE,
};
use crate::http::state::{store_call, ApiState};
use crate::ingest::metrics::{HttpAuthRefusal, Metrics, UploadReject};
use crate::storage::store::{NewSnapshot, PutSnapshot, Snapshot, Store};

/// Snapshots never change once stored, so clients may keep them; `private` because evidence
/// pictures must not sit in shared caches.
pub const SNAPSHOT_CACHE_CONTROL: &str = "private, max-age=86400";
/// Every JPEG starts with SOI (FF D8) followed by the next marker's FF.
const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// The answer to a stored (201) or already stored (200) upload.
#[derive(Serialize, JsonSchema)]
pub struct SnapshotStored {
    /// The snapshot's ULID.
    id: String,
    /// Its size in bytes.
    bytes: usize,
    /// Where it is served: `/api/v1/snapshots/{id}`.
    url: String,
    /// Set when the same bytes were already stored under the id (200).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
}

impl SnapshotStored {
    /// A newly stored snapshot's answer.
    pub(crate) fn created(id: Ulid, bytes: usize) -> SnapshotStored {
        SnapshotStored {
            id: id.to_string(),
            bytes,
            url: format!("/api/v1/snapshots/{id}"),
            note: None,
        }
    }
}

/// A request body of one JPEG, `description` saying what it is.
pub(crate) fn jpeg_request_body(description: &str) -> RequestBody {
    RequestBody {
        description: Some(description.into()),
        content: IndexMap::from_iter([(
            "image/jpeg".to_string(),
            MediaType {
                schema: Some(SchemaObject {
                    json_schema: json_schema!({
                        "type": "string",
                        "contentMediaType": "image/jpeg",
                        "format": "binary",
                    }),
                    example: None,
                    external_docs: None,
                }),
                ..MediaType::default()
            },
        )]),
        required: true,
        extensions: IndexMap::default(),
    }
}

/// Why `body` is not an evidence JPEG: empty, or not starting with the JPEG magic.
pub(crate) fn check_jpeg(body: &[u8]) -> Result<(), (UploadReject, ApiError)> {
    if body.is_empty() {
        return Err((
            UploadReject::Empty,
            ApiError::bad_request("empty body: send the JPEG bytes"),
        ));
    }
    if !body.starts_with(&JPEG_MAGIC) {
        let head: Vec<String> = body.iter().take(4).map(|b| format!("{b:02X}")).collect();
        return Err((
            UploadReject::NotJpeg,
            ApiError::bad_request(format!(
                "body is not a JPEG: it starts with {} instead of FF D8 FF",
                head.join(" ")
            )),
        ));
    }
    Ok(())
}

/// A JPEG answer: 200 `image/jpeg` and its headers.
pub(crate) fn jpeg_docs(op: TransformOperation) -> TransformOperation {
    let r = content(
        "The JPEG",
        "image/jpeg",
        json_schema!({"type": "string", "contentMediaType": "image/jpeg"}),
    );
    let r = with_header(
        r,
        "Cache-Control",
        "`private, max-age=86400`: snapshots never change",
        true,
    );
    let r = with_header(r, "X-Csb-Device", "The uploader, `{site}/{device}`", true);
    let r = with_header(
        r,
        "X-Csb-Event",
        "The event the uploader said the snapshot belongs to",
        false,
    );
    respond(op, 200, r)
}

pub(crate) fn get_snapshot_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getSnapshot")
        .tag("evidence")
        .summary("An evidence JPEG by id");
    store_errors(viewer(errors(
        jpeg_docs(op),
        &[
            (400, "The id is not a ULID"),
            (404, "No snapshot with this id"),
        ],
    )))
}

pub(crate) fn put_snapshot_docs(mut op: TransformOperation) -> TransformOperation {
    let header = |name: &str, required: bool, description: &str, schema| {
        ReferenceOr::Item(Parameter::Header {
            parameter_data: ParameterData {
                name: name.into(),
                description: Some(description.into()),
                required,
                format: ParameterSchemaOrContent::Schema(SchemaObject {
                    json_schema: schema,
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
    };
    let o = op.inner_mut();
    o.parameters.push(header(
        "X-Csb-Device",
        true,
        "The uploading device, `{site}/{device}` (two topic levels)",
        json_schema!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}/[A-Za-z0-9._-]{1,64}$"}),
    ));
    o.parameters.push(header(
        "X-Csb-Event",
        false,
        "The event (ULID) the snapshot belongs to",
        json_schema!({"type": "string", "pattern": "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"}),
    ));
    o.request_body = Some(ReferenceOr::Item(jpeg_request_body(
        "The JPEG: starts with FF D8 FF, 1..=`snapshot_max_bytes` bytes (hub config, default \
         2 MiB). `Content-Type` must be `image/jpeg` when given.",
    )));
    let stored = |description: &str| {
        content(
            description,
            "application/json",
            schema_of::<SnapshotStored>(),
        )
    };
    let op = op
        .id("putSnapshot")
        .tag("evidence")
        .summary("Upload an evidence JPEG (edge agents)")
        .description(
            "Stored durably before the answer. Idempotent: the same bytes again get 200; \
             different bytes under the same id 409 (snapshots are immutable). The id, headers \
             and declared length are checked before the body is read.",
        )
        .security_requirement(DEVICE_SIGNATURE);
    let op = respond(
        op,
        201,
        with_header(
            stored("Stored"),
            "Location",
            "`/api/v1/snapshots/{id}`",
            true,
        ),
    );
    let op = respond(
        op,
        200,
        stored("The same bytes were already stored under this id"),
    );
    let op = respond(
        op,
        401,
        with_header(
            error_response(
                "With `[auth] http = \"required\"`: no or a bad `X-Csb-Signature`, or the device \
                 has no credentials",
            ),
            "WWW-Authenticate",
            "`CSB-Signature realm=\"csb-hub\"`",
            true,
        ),
    );
    store_errors(errors(
        op,
        &[
            (
                400,
                "A bad id or header (`X-Csb-Device`, `X-Csb-Event`), or an empty or non-JPEG body",
            ),
            (409, "Different bytes are already stored under this id"),
            (413, "The body exceeds `snapshot_max_bytes`"),
            (415, "`Content-Type` is not `image/jpeg`"),
        ],
    ))
}

pub(crate) async fn get_snapshot<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<IdPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id("snapshot id", path)?;
    let snap = store_call(&st.store_slots, "snapshot lookup", st.store.snapshot(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no snapshot with id {id}")))?;
    Ok(jpeg_response(&st.metrics, snap))
}

pub(crate) fn jpeg_response(metrics: &Metrics, snap: Snapshot) -> Response {
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
    path: Result<Path<IdPath>, PathRejection>,
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
        let raw_id = path
            .as_ref()
            .map(|Path(p)| p.id.clone())
            .unwrap_or_default();
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
    check_jpeg(&body).map_err(|(reason, e)| refuse(reason, e))?;
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
                [(header::LOCATION, location)],
                Json(SnapshotStored::created(id, len)),
            )
                .into_response())
        }
        PutSnapshot::Identical => {
            metrics.add_snapshot_identical();
            Ok(Json(SnapshotStored {
                id: id.to_string(),
                bytes: len,
                url: location,
                note: Some("already stored with the same content"),
            })
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
