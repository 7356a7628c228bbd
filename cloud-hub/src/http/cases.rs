//! `/api/v1/cases`: the governance workflow's cases — list with filters and paging, detail with
//! timeline, evidence and the running stage's SLA light, a person's report (上报), and actions
//! (立案, 派遣, 处置, 反馈, 核查, 结案, 返工, 延期, 挂账, 督办 …).
//!
//! Who acts is the bearer token's name and role (with `[auth] http = "off"` everyone is the
//! admin `anonymous`); the workflow checks what each role may do, and a handler sees and acts
//! on its department's cases only (others answer 404, as if absent). Every answer that
//! changes a case is given after the change is on disk.

use aide::transform::TransformOperation;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use schemars::{json_schema, JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::sync::atomic::Ordering::Relaxed;

use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use ulid::Ulid;

use crate::cases::changes::CaseChange;
use crate::cases::engine::{Engine, EngineError};
use crate::cases::evaluation::{departments_csv, evaluate, Report};
use crate::cases::lifecycle::{
    Action, Actor, Case, Entry, NewCase, Place, Role as CaseRole, Source, State as CaseState,
    TransitionError,
};
use crate::cases::sla::Light;
use crate::cases::store::{CaseFilter, SledCases};
use crate::http::error::{clip, ApiError};
use crate::http::openapi::{
    content, errors, respond, schema_of, store_errors, viewer, with_header,
};
use crate::http::query::{Check, Checked, Count, Params, Time};
use crate::http::snapshots::{check_jpeg, jpeg_request_body, SnapshotStored};
use crate::http::sse::{last_event_id, Follow, Item, MAX_STREAMS};
use crate::http::state::{store_call, ApiState, Cases};
use crate::http::tokens::{Role, TokenInfo};
use crate::ingest::metrics::UploadReject;
use crate::storage::store::{NewSnapshot, Store};

/// Cases per page by default, and at most.
const DEFAULT_CASES: usize = 50;
const MAX_CASES: usize = 500;

/// A governance id (category, department, town): 1–64 of a-z, 0-9, `-`.
#[derive(Debug)]
pub enum GovId {}

impl Check for GovId {
    fn check(v: &str) -> Result<(), String> {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then_some(())
            .ok_or_else(|| format!("`{}` is not an id (1–64 of a-z, 0-9, -)", clip(v)))
    }
    fn schema() -> Schema {
        json_schema!({"type": "string", "pattern": "^[a-z0-9-]{1,64}$"})
    }
}

/// A case id (a ULID).
#[derive(Debug)]
pub enum CaseId {}

impl Check for CaseId {
    fn check(v: &str) -> Result<(), String> {
        ulid::Ulid::from_string(v)
            .map(|_| ())
            .map_err(|_| format!("`{}` is not a case id (26 characters, a ULID)", clip(v)))
    }
    fn schema() -> Schema {
        json_schema!({"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"})
    }
}

/// Filters of `GET /api/v1/cases`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct CaseParams {
    state: Option<CaseState>,
    /// Where it is (or was last) dispatched. A handler sees its own department's only.
    department: Option<Checked<GovId>>,
    category: Option<Checked<GovId>>,
    town: Option<Checked<GovId>>,
    /// Where they came from: `video_ai`, `sensor`, `citizen`, `inspector`, `superior`.
    source: Option<Source>,
    /// Only cases still open (not closed, rejected or voided).
    open: Option<bool>,
    /// The last id of the previous page: cases created before it.
    after: Option<Checked<CaseId>>,
    /// Most cases returned.
    limit: Option<Count<MAX_CASES, DEFAULT_CASES>>,
}

/// A case with its running stage's light and deadline as of now.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CaseView {
    #[serde(flatten)]
    case: Case,
    /// Green below 80 % of the stage's limit, yellow up to the deadline, red past it; `null`
    /// when no stage runs (closed) .
    light: Option<Light>,
    /// The running stage's deadline (Unix ms); `null` while suspended or when none runs.
    deadline_ms: Option<i64>,
    /// The actions the caller may take on the case now (role, department and state checked),
    /// as `POST /api/v1/cases/{id}/actions` names them. Only in answers about one case.
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<Vec<&'static str>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CasesBody {
    /// Newest first.
    cases: Vec<CaseView>,
    count: usize,
    /// Pass as `after` for the next page; `null` on the last one.
    next: Option<String>,
}

/// `POST /api/v1/cases`: a problem reported by a person.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// Category id, legacy (4-digit) or 2026 (5-digit) code.
    category: String,
    /// Where: point, town, zone, grid.
    #[serde(default)]
    place: Place,
    /// Snapshot and event ids, photo URLs.
    #[serde(default)]
    evidence: Vec<String>,
    /// Who raised it: `inspector` (default for an inspector's token), `citizen`, `superior`.
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/cases/{id}/actions`: `{"action": "dispatch", "department": "…", "note": "…",
/// "request_id": "…"}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ActionBody {
    #[serde(flatten)]
    action: Action,
    /// Why, as the timeline shows it.
    #[serde(default)]
    note: String,
    /// The client's id for this request: the same id again answers the same without acting
    /// twice (a retried request).
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ActionAnswer {
    /// The timeline entry the action wrote (or wrote before, for a repeated request id).
    entry: Entry,
    case: CaseView,
}

/// A JSON body whose errors name the field at fault (`body field `place.town`: …`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "header `Content-Type` must be `application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), format!("body: {}", e.body_text())))?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = clip(&e.inner().to_string());
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    if path == "." {
                        format!("body: {inner}")
                    } else {
                        format!("body field `{path}`: {inner}")
                    },
                )
            })
    }
}

impl<T: JsonSchema> aide::OperationInput for JsonBody<T> {
    fn operation_input(ctx: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        Json::<T>::operation_input(ctx, op)
    }
}

/// Who is asking: the token's name and role; with auth off, the admin `anonymous`.
pub(crate) fn actor(who: Option<Extension<TokenInfo>>) -> Actor {
    match who {
        None => Actor {
            id: "anonymous".into(),
            role: CaseRole::Admin,
            department: None,
        },
        Some(Extension(t)) => Actor {
            id: t.name,
            role: match t.role {
                Role::Viewer => CaseRole::Viewer,
                Role::Inspector => CaseRole::Inspector,
                Role::Handler => CaseRole::Handler,
                Role::Operator => CaseRole::Operator,
                Role::Supervisor => CaseRole::Supervisor,
                Role::Admin => CaseRole::Admin,
            },
            department: t.department,
        },
    }
}

fn cases<S>(st: &ApiState<S>) -> Result<Cases, ApiError> {
    st.cases.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the case workflow is not running on this hub",
        )
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no case `{}`", clip(id)))
}

fn engine_error(id: &str, e: EngineError) -> ApiError {
    match e {
        EngineError::NotFound(_) => not_found(id),
        EngineError::Transition(t) => {
            let status = match &t {
                TransitionError::Forbidden { .. } => StatusCode::FORBIDDEN,
                // A handler does not learn of other departments' cases.
                TransitionError::NotYourDepartment => return not_found(id),
                TransitionError::UnknownCategory(_) | TransitionError::UnknownDepartment(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                TransitionError::WrongState { .. }
                | TransitionError::NoExtensionPending
                | TransitionError::RequestIdReused(_) => StatusCode::CONFLICT,
            };
            ApiError::new(status, t.to_string())
        }
        e @ (EngineError::Store(_) | EngineError::Events(_)) => {
            tracing::error!(error = %e, "case store failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("case store: {e}"),
            )
        }
    }
}

/// Runs a blocking workflow call (sled, fsync) off the async threads, in one of the store
/// calls' slots and under their time limit (503 when all are taken or it takes too long), as
/// every other store-backed endpoint does.
pub(crate) async fn blocking<T: Send + 'static>(
    slots: &tokio::sync::Semaphore,
    what: &str,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let done = store_call(slots, what, async {
        Ok::<_, crate::storage::store::StoreError>(tokio::task::spawn_blocking(f).await)
    })
    .await?;
    done.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("case workflow task failed: {e}"),
        )
    })?
}

/// The case as `actor` may see it: leaders (viewers) do not get a citizen's contact details.
fn view(engine: &Engine<SledCases>, actor: &Actor, mut case: Case) -> CaseView {
    if actor.role == CaseRole::Viewer {
        if let Some(c) = case.citizen.as_mut() {
            c.contact = Default::default();
        }
    }
    let now = engine.now_ms();
    let cal = &engine.governance().calendar;
    CaseView {
        light: case.light(now, cal),
        deadline_ms: case
            .clock
            .as_ref()
            .filter(|_| case.state.is_open())
            .and_then(|c| c.deadline(cal)),
        case,
        actions: None,
    }
}

/// [`view`], with the actions `actor` may take on the case.
fn view_one(engine: &Engine<SledCases>, actor: &Actor, case: Case) -> CaseView {
    let now = engine.now_ms();
    let actions = case.actions_for(actor, now, engine.governance());
    CaseView {
        actions: Some(actions),
        ..view(engine, actor, case)
    }
}

pub(crate) fn list_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listCases")
        .tag("cases")
        .summary("Cases, newest first, with filters and paging")
        .description(
            "A handler's token sees its own department's cases only. Each case carries its \
             running stage's SLA light and deadline as of now.",
        );
    viewer(errors(
        op,
        &[
            (400, "A parameter is malformed (named)"),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    ))
}

pub(crate) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    Params(p, _): Params<CaseParams>,
) -> Result<Json<CasesBody>, ApiError> {
    let engine = cases(&st)?;
    let actor = actor(who);
    let mut filter = CaseFilter {
        state: p.state,
        department: p.department.map(Checked::into_string),
        category: p.category.map(Checked::into_string),
        town: p.town.map(Checked::into_string),
        source: p.source,
        open_only: p.open.unwrap_or(false),
    };
    if actor.role == CaseRole::Handler {
        if filter.department.is_some() && filter.department != actor.department {
            return Ok(Json(CasesBody {
                cases: Vec::new(),
                count: 0,
                next: None,
            }));
        }
        filter.department = actor.department.clone();
    }
    let limit = Count::or_default(p.limit);
    let after = p.after.map(Checked::into_string);
    blocking(&st.store_slots, "case list", move || {
        let found = engine
            .list(&filter, after.as_deref(), limit)
            .map_err(|e| engine_error("", e))?;
        let next = (found.len() == limit)
            .then(|| found.last().map(|c| c.id.clone()))
            .flatten();
        let cases: Vec<CaseView> = found
            .into_iter()
            .map(|c| view(&engine, &actor, c))
            .collect();
        Ok(Json(CasesBody {
            count: cases.len(),
            cases,
            next,
        }))
    })
    .await
}

#[derive(Deserialize, JsonSchema)]
pub struct CasePath {
    /// The case id.
    #[schemars(regex(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}$"))]
    id: String,
}

fn case_id(path: Result<Path<CasePath>, PathRejection>) -> Result<String, ApiError> {
    let Path(CasePath { id }) =
        path.map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))?;
    CaseId::check(&id).map_err(|m| ApiError::bad_request(format!("path parameter `id`: {m}")))?;
    Ok(id)
}

pub(crate) fn get_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getCase")
        .tag("cases")
        .summary("One case: timeline, evidence, SLA light and deadline");
    viewer(errors(
        op,
        &[
            (400, "The id is not a case id"),
            (404, "No such case (or another department's, for a handler)"),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    ))
}

pub(crate) async fn get<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<CasePath>, PathRejection>,
) -> Result<Json<CaseView>, ApiError> {
    let id = case_id(path)?;
    let engine = cases(&st)?;
    let actor = actor(who);
    blocking(&st.store_slots, "case read", move || {
        let case = engine
            .get(&id)
            .map_err(|e| engine_error(&id, e))?
            .filter(|c| c.visible_to(&actor))
            .ok_or_else(|| not_found(&id))?;
        Ok(Json(view_one(&engine, &actor, case)))
    })
    .await
}

pub(crate) fn report_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("reportCase")
        .tag("cases")
        .summary("Report a problem (上报): a new case waiting for an operator")
        .description("Inspectors, operators, supervisors and admins report.");
    let op = respond(
        op,
        201,
        content("The new case", "application/json", schema_of::<CaseView>()),
    );
    viewer(errors(
        op,
        &[
            (403, "This role may not report"),
            (415, "The body is not JSON"),
            (
                422,
                "A body field is wrong (named), or the category is unknown",
            ),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    ))
}

pub(crate) async fn report<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    JsonBody(body): JsonBody<ReportBody>,
) -> Result<(StatusCode, Json<CaseView>), ApiError> {
    let engine = cases(&st)?;
    let actor = actor(who);
    if !matches!(
        actor.role,
        CaseRole::Inspector | CaseRole::Operator | CaseRole::Supervisor | CaseRole::Admin
    ) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role `{:?}` may not report a case", actor.role).to_lowercase(),
        ));
    }
    if body.evidence.len() > 32 || body.evidence.iter().any(|e| e.len() > 2048) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body field `evidence`: at most 32 items of at most 2048 bytes",
        ));
    }
    let source = body.source.unwrap_or(match actor.role {
        CaseRole::Inspector => Source::Inspector,
        _ => Source::Superior,
    });
    if matches!(source, Source::VideoAi | Source::Sensor) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body field `source`: video_ai and sensor cases come from rule events",
        ));
    }
    blocking(&st.store_slots, "case report", move || {
        let new = NewCase {
            id: String::new(),
            source,
            category: body.category,
            place: body.place,
            evidence: body.evidence,
            camera: None,
        };
        // The note is stored with the case, not only answered.
        let case = engine
            .report(new, &actor, &body.note)
            .map_err(|e| engine_error("", e))?;
        Ok((StatusCode::CREATED, Json(view_one(&engine, &actor, case))))
    })
    .await
}

pub(crate) fn act_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("actOnCase")
        .tag("cases")
        .summary("Act on a case: register, reject, dispatch, accept, return, report handled, close, rework, extension, suspend/resume, supervise")
        .description(
            "The action's role and the case's state are checked; the change is durable before \
             the answer. With `request_id`, repeating the request answers the same and acts \
             once.",
        );
    viewer(errors(
        op,
        &[
            (400, "The id is not a case id"),
            (403, "This role may not take this action"),
            (404, "No such case (or another department's, for a handler)"),
            (409, "Not possible in the case's state, no extension pending, or the request id was used for another action"),
            (415, "The body is not JSON"),
            (422, "A body field is wrong (named), or the department is unknown"),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    ))
}

pub(crate) async fn act<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<CasePath>, PathRejection>,
    JsonBody(body): JsonBody<ActionBody>,
) -> Result<Json<ActionAnswer>, ApiError> {
    let id = case_id(path)?;
    let engine = cases(&st)?;
    let actor = actor(who);
    if body.note.len() > 4096 || body.request_id.as_ref().is_some_and(|r| r.len() > 128) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body field `note` (at most 4096 bytes) or `request_id` (at most 128) is too long",
        ));
    }
    blocking(&st.store_slots, "case action", move || {
        // A handler acting on another department's case learns nothing of it.
        let visible = engine
            .get(&id)
            .map_err(|e| engine_error(&id, e))?
            .is_some_and(|c| c.visible_to(&actor));
        if !visible {
            return Err(not_found(&id));
        }
        let (entry, case) = engine
            .transition(
                &id,
                &actor,
                body.action,
                &body.note,
                body.request_id.as_deref(),
            )
            .map_err(|e| engine_error(&id, e))?;
        Ok(Json(ActionAnswer {
            entry,
            case: view_one(&engine, &actor, case),
        }))
    })
    .await
}

pub(crate) fn add_photo_docs(mut op: TransformOperation) -> TransformOperation {
    op.inner_mut().request_body = Some(aide::openapi::ReferenceOr::Item(jpeg_request_body(
        "The photo, a JPEG of 1..=`snapshot_max_bytes` bytes; `Content-Type: image/jpeg`.",
    )));
    let op = op
        .id("addCasePhoto")
        .tag("cases")
        .summary("Add a photo to a case (a handler's proof of work, an inspector's picture)")
        .description(
            "Stores the JPEG durably and answers its snapshot id, to be named in the next \
             action's `photos` (e.g. `report_handled`); it is served at \
             `/api/v1/snapshots/{id}`. Only someone who may act on the case now may add one.",
        );
    let op = respond(
        op,
        201,
        with_header(
            content("Stored", "application/json", schema_of::<SnapshotStored>()),
            "Location",
            "`/api/v1/snapshots/{id}`",
            true,
        ),
    );
    store_errors(viewer(errors(
        op,
        &[
            (
                400,
                "The id is not a case id, or the body is empty or not a JPEG",
            ),
            (403, "This role may not act on cases"),
            (404, "No such case (or another department's, for a handler)"),
            (409, "Nothing the caller may do on the case in its state"),
            (413, "The body exceeds `snapshot_max_bytes`"),
            (415, "`Content-Type` is not `image/jpeg`"),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    )))
}

/// `POST /api/v1/cases/{id}/photos`: a JPEG from someone who may act on the case, stored as a
/// snapshot (site `cases`, device the case id) before the answer.
pub(crate) async fn add_photo<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<CasePath>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = case_id(path)?;
    let engine = cases(&st)?;
    let actor = actor(who);
    let jpeg = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("image/jpeg"));
    if !jpeg {
        st.metrics.reject_upload(UploadReject::ContentType);
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "header `Content-Type` must be `image/jpeg`",
        ));
    }
    let max = st.snapshot_max_bytes;
    // Reads at most `max` bytes (the route's DefaultBodyLimit).
    let body = Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            st.metrics.reject_upload(UploadReject::TooLarge);
            ApiError::new(
                e.status(),
                format!("photo exceeds snapshot_max_bytes = {max}"),
            )
        } else {
            ApiError::new(e.status(), format!("body: {}", e.body_text()))
        }
    })?;
    check_jpeg(&body).map_err(|(reason, e)| {
        st.metrics.reject_upload(reason);
        e
    })?;
    if actor.role == CaseRole::Viewer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a viewer may not add photos to cases",
        ));
    }
    let check = {
        let (engine, actor, id) = (engine.clone(), actor.clone(), id.clone());
        move || {
            let case = engine
                .get(&id)
                .map_err(|e| engine_error(&id, e))?
                .filter(|c| c.visible_to(&actor))
                .ok_or_else(|| not_found(&id))?;
            if case
                .actions_for(&actor, engine.now_ms(), engine.governance())
                .is_empty()
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "case `{id}` is {:?}: nothing you may do on it now, so no photo for it",
                        case.state
                    ),
                ));
            }
            Ok(())
        }
    };
    blocking(&st.store_slots, "case read", check).await?;
    let snap = NewSnapshot {
        id: Ulid::new(),
        site: "cases".into(),
        device: id.clone(),
        event: None,
        received_ms: csb_wire::now_ms(),
        bytes: Vec::from(body),
    };
    let (snap_id, len) = (snap.id, snap.bytes.len());
    store_call(&st.store_slots, "photo upload", st.store.put_snapshot(snap))
        .await
        .inspect_err(|_| st.metrics.add_snapshot_store_failed())?;
    st.metrics.add_snapshot_stored(len as u64);
    tracing::info!(case = %id, actor = %actor.id, photo = %snap_id, bytes = len, "case photo stored");
    Ok((
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            format!("/api/v1/snapshots/{snap_id}"),
        )],
        Json(SnapshotStored::created(snap_id, len)),
    )
        .into_response())
}

/// Filters of `GET /api/v1/cases/stream`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct StreamParams {
    /// Changes of cases dispatched to this department. A handler gets its own department's.
    department: Option<Checked<GovId>>,
    category: Option<Checked<GovId>>,
    town: Option<Checked<GovId>>,
}

pub(crate) fn stream_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("caseStream")
        .tag("cases")
        .summary("Server-Sent Events: one `change` per durable change of a case")
        .description(
            "Each `change` event is a `CaseChange` (the case's id, state, category, department, \
             town and the newest timeline entry's action) with its stream position as `id`: send \
             it back as `Last-Event-ID` to resume. `lagged` says changes were missed (the client \
             fell behind, or resumed after a restart or too late): re-read `GET /api/v1/cases`, \
             then carry on. A handler's token streams its own department's cases only. Ends \
             when the hub shuts down.",
        );
    let op = respond(
        op,
        200,
        content(
            "The event stream; each `change` event's data is a `CaseChange`",
            "text/event-stream",
            json_schema!({"type": "string"}),
        ),
    );
    viewer(errors(
        op,
        &[
            (400, "A parameter is malformed (named)"),
            (
                503,
                "The case workflow is not running, or too many change streams are open",
            ),
        ],
    ))
}

/// A change as streamed, and `lagged` when some were missed.
fn case_event(item: Item<CaseChange>) -> SseEvent {
    match item {
        Item::Change(c) => SseEvent::default()
            .event("change")
            .id(c.seq.to_string())
            .data(serde_json::to_string(&*c).unwrap_or_default()),
        Item::Lagged(missed) => SseEvent::default().event("lagged").data(
            serde_json::json!({"missed": missed,
                   "detail": "changes were missed; re-read GET /api/v1/cases"})
            .to_string(),
        ),
    }
}

pub(crate) async fn stream<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    headers: HeaderMap,
    Params(p, _): Params<StreamParams>,
) -> Result<Response, ApiError> {
    let engine = cases(&st)?;
    let actor = actor(who);
    let mut department = p.department.map(Checked::into_string);
    let category = p.category.map(Checked::into_string);
    let town = p.town.map(Checked::into_string);
    // A handler follows its own department's cases; asking for another's streams nothing,
    // as the list answers nothing.
    let mut nothing = false;
    if actor.role == CaseRole::Handler {
        nothing = department.is_some() && department != actor.department;
        department = actor.department.clone();
        nothing |= department.is_none();
    }
    let Ok(permit) = st.case_streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} case change streams are open; retry later"),
        ));
    };
    let wanted = move |c: &CaseChange| {
        !nothing
            && department
                .as_ref()
                .is_none_or(|d| c.department.as_ref() == Some(d))
            && category.as_ref().is_none_or(|k| &c.category == k)
            && town.as_ref().is_none_or(|t| c.town.as_ref() == Some(t))
    };
    let counted = engine.clone();
    let follow = Follow::new(
        engine.changes().feed(),
        last_event_id(&headers),
        wanted,
        move |n| {
            counted.counters.stream_lagged.fetch_add(n, Relaxed);
        },
        Some(permit),
    );
    Ok(follow.respond(case_event))
}

/// `GET /api/v1/evaluation`: the period and the answer's form.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct EvaluationParams {
    /// Start of the period (cases registered from here), inclusive.
    from: Time,
    /// End of the period, exclusive; what happened to the cases counts up to here (or now,
    /// if earlier).
    to: Time,
    /// `json` (default) or `csv` (the departments, best first).
    format: Option<EvalFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvalFormat {
    Json,
    Csv,
}

pub(crate) fn evaluation_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("evaluation")
        .tag("cases")
        .summary("综合评价: departments, towns and cameras over a period")
        .description(
            "Per department (the one a case was last dispatched to) and town, for cases \
             registered in the period: 立案数, 处置数, 按期处置数, 超期未处置数, 应结案数, 结案数, \
             按期结案数, 返工数, 超期数, the rates and the 综合指标值 (0..100) with the weights and \
             bands of the governance configuration; per camera the precision of its video cases \
             (误报 rejections). `format=csv` gives the departments as CSV.",
        );
    let mut r = content(
        "The evaluation (JSON), or the departments as CSV",
        "application/json",
        schema_of::<Report>(),
    );
    let csv = content("", "text/csv", json_schema!({"type": "string"}));
    r.content.extend(csv.content);
    let r = with_header(
        r,
        "Content-Disposition",
        "With `format=csv`: `attachment; filename=\"evaluation.csv\"`",
        false,
    );
    let op = respond(op, 200, r);
    viewer(errors(
        op,
        &[
            (
                400,
                "A parameter is malformed (named), or `from` is not before `to`",
            ),
            (500, "The case store failed (logged)"),
            (503, "The case workflow is not running"),
        ],
    ))
}

/// Cases an evaluation reads at most (a county's year is far below).
const MAX_EVALUATED: usize = 1_000_000;

pub(crate) async fn evaluation<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<EvaluationParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if p.from.0 >= p.to.0 {
        return Err(ApiError::bad_request(
            "parameter `from` must be before `to`",
        ));
    }
    let engine = cases(&st)?;
    blocking(&st.store_slots, "evaluation", move || {
        let all = engine
            .list(&CaseFilter::default(), None, MAX_EVALUATED)
            .map_err(|e| engine_error("", e))?;
        let at = p.to.0.min(engine.now_ms());
        let report = evaluate(&all, p.from.0, p.to.0, at, engine.governance());
        Ok(match p.format.unwrap_or(EvalFormat::Json) {
            EvalFormat::Json => Json(report).into_response(),
            EvalFormat::Csv => (
                [
                    (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        "attachment; filename=\"evaluation.csv\"",
                    ),
                ],
                departments_csv(&report),
            )
                .into_response(),
        })
    })
    .await
}
