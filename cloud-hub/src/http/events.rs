//! Events: `GET /api/v1/events` (newest first, filtered), `GET /api/v1/events/{id}` and the
//! evidence JPEG of a rule event, `GET /api/v1/events/{id}/snapshot`. Counts over time are in
//! [`crate::http::aggregate`].

use aide::transform::TransformOperation;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::http::error::{clip, parse_id, ApiError, IdPath};
use crate::http::openapi::{errors, store_errors, viewer};
use crate::http::query::{
    check_time_range, from_pairs, Camera, CategoryCode, Checked, ClassName, Count, Device,
    EventType, KindParam, Params, PhaseParam, Repeats, Rest, Site, Style, Time, ZoneId,
};
use crate::http::snapshots::jpeg_response;
use crate::http::state::{store_call, ApiState};
use crate::platform::county::County;
use crate::storage::store::{ClassFilter, EventQuery, Store, DEFAULT_LIMIT, MAX_LIMIT};

/// Filters of `GET /api/v1/events`; every one narrows the answer.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct EventParams {
    /// Site of the device.
    site: Option<Checked<Site>>,
    /// The device (gateway) that sent the event.
    device: Option<Checked<Device>>,
    /// The camera (or sensor, for sensor rule events) id.
    camera: Option<Checked<Camera>>,
    /// A label (e.g. `person`) or class id, matched against the `objects` of detection and rule
    /// events alike.
    class: Option<Checked<ClassName>>,
    /// `detection` or `rule`.
    kind: Option<KindParam>,
    /// A rule's `event_type` (e.g. `illegal_parking`); only rule events match.
    event_type: Option<Checked<EventType>>,
    /// A rule's `zone`; only rule events match.
    zone: Option<Checked<ZoneId>>,
    /// A rule's `category` code; only rule events match.
    category: Option<Checked<CategoryCode>>,
    /// A rule's `phase`; only rule events match.
    phase: Option<PhaseParam>,
    /// A town of the county model (`GET /api/v1/county`): events of its cameras only.
    #[schemars(length(min = 1, max = 64))]
    town: Option<String>,
    /// Earliest event time, inclusive.
    from: Option<Time>,
    /// Latest event time, exclusive.
    to: Option<Time>,
    /// Most events returned.
    limit: Option<Count<MAX_LIMIT, DEFAULT_LIMIT>>,
}

/// The event filters `/api/v1/events` and `/api/v1/events/aggregate` share.
pub(crate) struct Filters {
    pub site: Option<Checked<Site>>,
    pub device: Option<Checked<Device>>,
    pub camera: Option<Checked<Camera>>,
    pub kind: Option<KindParam>,
    pub event_type: Option<Checked<EventType>>,
    pub zone: Option<Checked<ZoneId>>,
    pub category: Option<Checked<CategoryCode>>,
    pub phase: Option<PhaseParam>,
    pub town: Option<String>,
    pub from: Option<Time>,
    pub to: Option<Time>,
}

impl Filters {
    /// The filters as a query (default limit). `town` needs the county model: its cameras are
    /// the filter.
    pub(crate) fn into_query(self, county: Option<&County>) -> Result<EventQuery, ApiError> {
        let mut q = EventQuery {
            site: self.site.map(Checked::into_string),
            device: self.device.map(Checked::into_string),
            camera: self.camera.map(Checked::into_string),
            kind: self.kind.map(|k| k.0),
            event_type: self.event_type.map(Checked::into_string),
            zone: self.zone.map(Checked::into_string),
            category: self.category.map(Checked::into_string),
            phase: self.phase.map(|p| p.0),
            from_ms: self.from.map(|t| t.0),
            to_ms: self.to.map(|t| t.0),
            ..EventQuery::default()
        };
        if let Some(v) = self.town {
            let Some(c) = county else {
                return Err(bad_param(
                    "town",
                    "needs the county model (the hub runs without one)",
                ));
            };
            if !c.towns.iter().any(|t| t.props.id == v) {
                return Err(bad_param(
                    "town",
                    format!("`{}` is not a town of the county model", clip(&v)),
                ));
            }
            q.cameras = Some(
                c.cameras
                    .iter()
                    .filter(|cam| cam.placed.town.as_deref() == Some(v.as_str()))
                    .map(|cam| cam.id.clone())
                    .collect(),
            );
        }
        Ok(q)
    }
}

/// A refused parameter value, worded like the ones serde refuses.
pub(crate) fn bad_param(name: &str, detail: impl Into<String>) -> ApiError {
    Rest::reject(crate::http::query::QueryFault::Bad {
        name: name.to_string(),
        detail: detail.into(),
    })
}

impl EventParams {
    fn into_query(self, county: Option<&County>) -> Result<EventQuery, ApiError> {
        let EventParams {
            site,
            device,
            camera,
            class,
            kind,
            event_type,
            zone,
            category,
            phase,
            town,
            from,
            to,
            limit,
        } = self;
        let mut q = Filters {
            site,
            device,
            camera,
            kind,
            event_type,
            zone,
            category,
            phase,
            town,
            from,
            to,
        }
        .into_query(county)?;
        q.class = class.map(|c| ClassFilter::parse(&c.0));
        q.limit = Count::or_default(limit);
        check_time_range(q.from_ms, q.to_ms)?;
        Ok(q)
    }
}

/// Turns query pairs into an [`EventQuery`]; every error names its parameter.
pub fn parse_event_query(pairs: &[(String, String)]) -> Result<EventQuery, ApiError> {
    from_pairs::<EventParams>(pairs, Repeats::Refuse)
        .map_err(Rest::reject)?
        .into_query(None)
}

/// Serialised straight from the wire types (not through `json!`), so f32 scores and boxes keep
/// their short form (`0.86`, not `0.8600000143051147`).
#[derive(Serialize, JsonSchema)]
pub struct EventsBody {
    /// Newest first.
    events: Vec<csb_wire::Event>,
    /// Events in this answer.
    count: usize,
    /// The scan limit was reached before `limit` matches were found: older matches may exist,
    /// narrow the time range.
    truncated: bool,
}

/// A refused parameter (400), for the operations that take query parameters.
pub(crate) const BAD_PARAMETER: (u16, &str) = (
    400,
    "A parameter was refused (unknown, repeated, or a bad value): the message names it",
);

pub(crate) fn events_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listEvents")
        .tag("events")
        .summary("Stored events, newest first")
        .description(
            "Detection and rule events as the edge agents sent them, newest first (by event \
             time), filtered. A scan stops at the store's scan limit: `truncated` says older \
             matches may exist.",
        );
    store_errors(viewer(errors(op, &[BAD_PARAMETER])))
}

pub(crate) async fn events<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<EventParams>,
) -> Result<Json<EventsBody>, ApiError> {
    let q = p.into_query(st.county.as_deref())?;
    let page = store_call(&st.store_slots, "event query", st.store.query_events(q)).await?;
    Ok(Json(EventsBody {
        count: page.events.len(),
        truncated: page.truncated,
        events: page.events,
    }))
}

pub(crate) async fn event_by_id<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<IdPath>, PathRejection>,
) -> Result<Json<csb_wire::Event>, ApiError> {
    let id = parse_id("event id", path)?;
    // Json of the wire type, not `json!`: keeps the short f32 form (see `EventsBody`).
    store_call(&st.store_slots, "event lookup", st.store.event(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))
}

pub(crate) fn event_by_id_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getEvent")
        .tag("events")
        .summary("One stored event by id");
    store_errors(viewer(errors(
        op,
        &[
            (400, "The id is not a ULID"),
            (404, "No event with this id"),
        ],
    )))
}

pub(crate) fn event_snapshot_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getEventSnapshot")
        .tag("evidence")
        .summary("The evidence JPEG of a rule event")
        .description(
            "The JPEG the event's `rule.snapshot` names (uploaded separately by the edge agent).",
        );
    let op = crate::http::snapshots::jpeg_docs(op);
    store_errors(viewer(errors(
        op,
        &[
            (400, "The id is not a ULID"),
            (
                404,
                "No such event, the event has no snapshot, or the snapshot has not arrived yet \
                 (retry later); the message says which",
            ),
            (
                409,
                "The snapshot was uploaded by another device than the event's",
            ),
        ],
    )))
}

/// The evidence JPEG of a rule event. 404 names which link is missing: the event, its snapshot
/// reference, or the snapshot itself (uploaded separately, so it may not have arrived yet).
pub(crate) async fn event_snapshot<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<IdPath>, PathRejection>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::tests::pairs;
    use csb_wire::EventKind;

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
}
