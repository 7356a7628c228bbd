//! Rollouts and device groups over HTTP:
//! - `GET /api/v1/rollouts` (newest first, summarised), `POST /api/v1/rollouts` (start one:
//!   canary, batches, thresholds, soak), `GET /api/v1/rollouts/{id}` (every device, the log),
//!   `POST /api/v1/rollouts/{id}/{action}` (`pause`, `resume`, `abort`);
//! - `GET /api/v1/fleet/groups`, `GET|PUT|DELETE /api/v1/fleet/groups/{group}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use aide::transform::TransformOperation;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fleet::groups::{Group, GroupError, Groups};
use crate::fleet::rollout::{
    Action, DeviceRunState, Rollout, RolloutError, RolloutSpec, RolloutState, Rollouts,
};
use crate::http::cases::{blocking, JsonBody};
use crate::http::error::{path_of, ApiError};
use crate::http::openapi::{content, errors, operator, respond, schema_of, viewer};
use crate::http::state::ApiState;
use crate::http::tokens::TokenInfo;
use crate::storage::store::Store;

/// One row of the rollout list.
#[derive(Serialize, JsonSchema)]
pub struct RolloutRow {
    pub id: String,
    /// `name@version`.
    pub model: String,
    pub state: RolloutState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step under way (0 the canary) and how many there are.
    pub step: usize,
    pub steps: usize,
    pub devices: usize,
    /// Devices per state (`waiting`, `updating`, `soaking`, `succeeded`, `failed`, …).
    pub counts: BTreeMap<String, usize>,
    pub created_ms: i64,
    pub created_by: String,
    pub updated_ms: i64,
}

#[derive(Serialize, JsonSchema)]
pub struct RolloutList {
    pub count: usize,
    pub rollouts: Vec<RolloutRow>,
}

/// A rollout with its device counts.
#[derive(Serialize, JsonSchema)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub counts: BTreeMap<String, usize>,
}

fn counts(r: &Rollout) -> BTreeMap<String, usize> {
    r.counts()
        .into_iter()
        .map(|(k, v)| (state_name(k), v))
        .collect()
}

fn state_name(s: DeviceRunState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl From<Rollout> for RolloutView {
    fn from(rollout: Rollout) -> Self {
        RolloutView {
            counts: counts(&rollout),
            rollout,
        }
    }
}

/// `{id}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct RolloutPath {
    /// The rollout's id, e.g. `ro-3`.
    #[schemars(regex(pattern = r"^ro-[0-9]{1,19}$"), example = &"ro-1")]
    pub id: String,
}

/// `{id}/{action}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ActionPath {
    /// The rollout's id, e.g. `ro-3`.
    #[schemars(regex(pattern = r"^ro-[0-9]{1,19}$"), example = &"ro-1")]
    pub id: String,
    /// `pause` (no new device starts), `resume`, or `abort` (devices updating go back too).
    pub action: Action,
}

/// `{group}` in the path.
#[derive(Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct GroupPath {
    /// The group's name (letters, digits, `_`, `-`, `.`; 1–64).
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        example = &"pilot"
    )]
    pub group: String,
}

/// A device group's members.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGroup {
    /// `SITE/DEVICE`, in the order rollouts take them.
    pub devices: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct GroupList {
    pub count: usize,
    pub groups: Vec<Group>,
}

fn rollouts_of<S>(st: &ApiState<S>) -> Result<(Arc<Rollouts>, Arc<Groups>), ApiError> {
    match (&st.rollouts, &st.groups) {
        (Some(r), Some(g)) => Ok((r.clone(), g.clone())),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rollouts are not running",
        )),
    }
}

fn by_of(who: Option<Extension<TokenInfo>>) -> String {
    who.map_or_else(|| "anonymous".to_string(), |Extension(t)| t.name)
}

fn rollout_error(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Invalid { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        RolloutError::NotFound(_) => ApiError::not_found(e.to_string()),
        RolloutError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        RolloutError::Fleet(crate::fleet::config::FleetError::Invalid { .. }) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        _ => {
            tracing::error!("{e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

fn group_error(e: GroupError) -> ApiError {
    match e {
        GroupError::Invalid { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        GroupError::NotFound(_) => ApiError::not_found(e.to_string()),
        _ => {
            tracing::error!("{e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

const NOT_RUNNING: (u16, &str) = (503, "Rollouts are not running");

pub(crate) fn list_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listRollouts")
        .tag("fleet")
        .summary("Rollouts, newest first: model, state, step, devices per state");
    errors(viewer(op), &[NOT_RUNNING])
}

pub(crate) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<RolloutList>, ApiError> {
    let (ro, _) = rollouts_of(&st)?;
    let rollouts: Vec<RolloutRow> = ro
        .list()
        .into_iter()
        .map(|r| RolloutRow {
            model: r.model.key(),
            counts: counts(&r),
            step: r.step,
            steps: r.steps.len(),
            devices: r.devices.len(),
            id: r.id,
            state: r.state,
            reason: r.reason,
            created_ms: r.created_ms,
            created_by: r.created_by,
            updated_ms: r.updated_ms,
        })
        .collect();
    Ok(Json(RolloutList {
        count: rollouts.len(),
        rollouts,
    }))
}

pub(crate) fn start_docs(op: TransformOperation) -> TransformOperation {
    let op = op.id("startRollout").tag("fleet").summary(
        "Start a rollout of a warehouse model: the canary first, then batches, each soaked and judged; failures roll back",
    );
    let op = respond(
        op,
        201,
        content("Started", "application/json", schema_of::<RolloutView>()),
    );
    errors(
        operator(op),
        &[
            (409, "A device is already in a running rollout"),
            (413, "The body is over the request size limit"),
            (415, "`Content-Type` is not `application/json`"),
            (
                422,
                "A body field is wrong: an unknown or unready model, a bad device, group or threshold (the message names the field)",
            ),
            (500, "The record could not be stored (logged)"),
            NOT_RUNNING,
        ],
    )
}

pub(crate) async fn start<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    JsonBody(spec): JsonBody<RolloutSpec>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let (ro, _) = rollouts_of(&st)?;
    let by = by_of(who);
    let r = blocking(&st.store_slots, "rollouts", move || {
        ro.start(spec, &by).map_err(rollout_error)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

pub(crate) fn get_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getRollout")
        .tag("fleet")
        .summary("One rollout: each device's state and reason, the steps, the log");
    errors(
        viewer(op),
        &[(400, "A bad path"), (404, "No such rollout"), NOT_RUNNING],
    )
}

pub(crate) async fn get<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<RolloutPath>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let p = path_of(path)?;
    let (ro, _) = rollouts_of(&st)?;
    ro.get(&p.id)
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found(format!("no rollout `{}`", p.id)))
}

pub(crate) fn act_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("actOnRollout")
        .tag("fleet")
        .summary("Pause, resume or abort a rollout (abort sends the devices updating back to their previous configuration)");
    errors(
        operator(op),
        &[
            (400, "A bad path or action"),
            (404, "No such rollout"),
            (409, "The rollout has finished"),
            (500, "The record could not be stored (logged)"),
            NOT_RUNNING,
        ],
    )
}

pub(crate) async fn act<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<ActionPath>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let p = path_of(path)?;
    let (ro, _) = rollouts_of(&st)?;
    let by = by_of(who);
    let r = blocking(&st.store_slots, "rollouts", move || {
        ro.act(&p.id, p.action, &by).map_err(rollout_error)
    })
    .await?;
    Ok(Json(r.into()))
}

pub(crate) fn groups_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listDeviceGroups")
        .tag("fleet")
        .summary("Device groups (targets of rollouts)");
    errors(viewer(op), &[NOT_RUNNING])
}

pub(crate) async fn groups<S: Store>(
    State(st): State<ApiState<S>>,
) -> Result<Json<GroupList>, ApiError> {
    let (_, g) = rollouts_of(&st)?;
    let groups = g.list();
    Ok(Json(GroupList {
        count: groups.len(),
        groups,
    }))
}

pub(crate) fn group_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getDeviceGroup")
        .tag("fleet")
        .summary("One device group");
    errors(
        viewer(op),
        &[(400, "A bad path"), (404, "No such group"), NOT_RUNNING],
    )
}

pub(crate) async fn group<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<GroupPath>, PathRejection>,
) -> Result<Json<Group>, ApiError> {
    let p = path_of(path)?;
    let (_, g) = rollouts_of(&st)?;
    g.get(&p.group)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no device group `{}`", p.group)))
}

pub(crate) fn put_group_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("setDeviceGroup")
        .tag("fleet")
        .summary("Create or replace a device group");
    let op = respond(
        op,
        201,
        content("Created", "application/json", schema_of::<Group>()),
    );
    let op = respond(
        op,
        200,
        content("Replaced", "application/json", schema_of::<Group>()),
    );
    errors(
        operator(op),
        &[
            (400, "A bad path"),
            (413, "The body is over the request size limit"),
            (415, "`Content-Type` is not `application/json`"),
            (
                422,
                "A body field or the name is wrong (the message names it)",
            ),
            (500, "The record could not be stored (logged)"),
            NOT_RUNNING,
        ],
    )
}

pub(crate) async fn put_group<S: Store>(
    State(st): State<ApiState<S>>,
    who: Option<Extension<TokenInfo>>,
    path: Result<Path<GroupPath>, PathRejection>,
    JsonBody(body): JsonBody<SetGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let p = path_of(path)?;
    let (_, g) = rollouts_of(&st)?;
    let by = by_of(who);
    let now = csb_wire::now_ms();
    let (group, created) = blocking(&st.store_slots, "device groups", move || {
        g.put(&p.group, body.devices, body.description, &by, now)
            .map_err(group_error)
    })
    .await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(group)))
}

pub(crate) fn delete_group_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("deleteDeviceGroup")
        .tag("fleet")
        .summary("Delete a device group (running rollouts keep their devices)");
    let op = op.response_with::<204, (), _>(|r| r.description("Deleted"));
    errors(
        operator(op),
        &[
            (400, "A bad path"),
            (404, "No such group"),
            (500, "The record could not be stored (logged)"),
            NOT_RUNNING,
        ],
    )
}

pub(crate) async fn delete_group<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<GroupPath>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let p = path_of(path)?;
    let (_, g) = rollouts_of(&st)?;
    blocking(&st.store_slots, "device groups", move || {
        g.remove(&p.group).map_err(group_error)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
