//! `GET /api/v1/events/aggregate`: event counts grouped by dimensions and time bucket, what
//! the cockpit's charts are made of.

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::Json;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use crate::http::error::{clip, ApiError};
use crate::http::events::{bad_param, Filters, BAD_PARAMETER};
use crate::http::openapi::{errors, store_errors, viewer};
use crate::http::query::{
    check_time_range, from_text, Camera, CategoryCode, Checked, Device, EventType, KindParam,
    Params, PhaseParam, Site, Time, ZoneId,
};
use crate::http::state::{store_call, ApiState};
use crate::platform::county::County;
use crate::storage::store::{
    AggregateGroup, EventAggregate, EventAggregateQuery, EventDim, Store, MAX_BUCKETS,
};

/// Parameters of `GET /api/v1/events/aggregate`: the event filters (but `class` and `limit`),
/// the grouping and the bucket size.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct AggregateParams {
    /// Site of the device.
    site: Option<Checked<Site>>,
    /// The device (gateway) that sent the event.
    device: Option<Checked<Device>>,
    /// The camera (or sensor, for sensor rule events) id.
    camera: Option<Checked<Camera>>,
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
    /// Start of the range, inclusive; default `to` − 24 h.
    from: Option<Time>,
    /// End of the range, exclusive; default now.
    to: Option<Time>,
    /// Time bucket: a number and a unit s, m, h or d, at least a minute (e.g. `15m`, `1h`,
    /// `1d`); none: one total per group.
    bucket: Option<Bucket>,
    /// Comma list of at most 3 dimensions to group by: town (needs the county model), site,
    /// device, camera, kind, event_type, zone, category, phase.
    #[schemars(regex(pattern = r"^[a-z_,]*$"))]
    by: Option<String>,
}

/// `bucket`: `1m`, `15m`, `1h`, `1d` style (s, m, h, d), at least a minute, as ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket(pub i64);

impl<'de> Deserialize<'de> for Bucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let unit_ms = match unit {
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err("must be a number and a unit s, m, h or d, e.g. 1h".into()),
            };
            n.parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .filter(|ms| *ms >= 60_000)
                .map(Bucket)
                .ok_or_else(|| "must be at least 1m (a number and a unit s, m, h or d)".into())
        })
    }
}

impl JsonSchema for Bucket {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bucket".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[0-9]+[smhd]$", "examples": ["15m", "1h"]})
    }
}

/// A grouping of `/api/v1/events/aggregate`: a stored dimension, or the camera's town.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    Dim(EventDim),
    Town,
}

impl GroupBy {
    fn name(self) -> &'static str {
        match self {
            GroupBy::Town => "town",
            GroupBy::Dim(d) => d.name(),
        }
    }
}

/// `by`: a comma list of dimensions, each once, at most 3.
fn group_by(v: &str, county: Option<&County>) -> Result<Vec<GroupBy>, String> {
    let mut by = Vec::new();
    for d in v.split(',').filter(|d| !d.is_empty()) {
        let g = match d {
            "town" if county.is_none() => return Err("`town` needs the county model".into()),
            "town" => GroupBy::Town,
            _ => GroupBy::Dim(
                EventDim::ALL
                    .into_iter()
                    .find(|x| x.name() == d)
                    .ok_or_else(|| {
                        format!(
                            "`{}` is not one of town, site, device, camera, kind, event_type, \
                             zone, category, phase",
                            clip(d)
                        )
                    })?,
            ),
        };
        if !by.contains(&g) {
            by.push(g);
        }
    }
    if by.len() > 3 {
        return Err("at most 3 dimensions".into());
    }
    Ok(by)
}

fn parse_aggregate_query(
    p: AggregateParams,
    county: Option<&County>,
    now_ms: i64,
) -> Result<(EventAggregateQuery, Vec<GroupBy>), ApiError> {
    let AggregateParams {
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
        bucket,
        by,
    } = p;
    let filter = Filters {
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
    let by = match by {
        Some(v) => group_by(&v, county).map_err(|e| bad_param("by", e))?,
        None => Vec::new(),
    };
    let bucket_ms = bucket.map(|b| b.0);
    let to_ms = filter.to_ms.unwrap_or(now_ms);
    let from_ms = filter.from_ms.unwrap_or(to_ms - 86_400_000);
    check_time_range(Some(from_ms), Some(to_ms))?;
    if let Some(b) = bucket_ms {
        if (to_ms - from_ms) / b > MAX_BUCKETS {
            return Err(ApiError::bad_request(format!(
                "bucket: {} buckets between from and to, at most {} (a larger bucket or a \
                 shorter range)",
                (to_ms - from_ms) / b,
                MAX_BUCKETS
            )));
        }
    }
    // The store groups by stored dimensions; a town comes from the camera.
    let mut dims: Vec<EventDim> = by
        .iter()
        .filter_map(|g| match g {
            GroupBy::Dim(d) => Some(*d),
            GroupBy::Town => None,
        })
        .collect();
    if by.contains(&GroupBy::Town) {
        dims.extend([EventDim::Site, EventDim::Device, EventDim::Camera]);
    }
    Ok((
        EventAggregateQuery {
            filter,
            from_ms,
            to_ms,
            bucket_ms,
            by: dims,
        },
        by,
    ))
}

/// Regroups a store aggregate grouped by stored dimensions (+ site, device, camera when
/// `by` has `town`) into `by`'s order, the town from the county model's cameras.
fn regroup(agg: EventAggregate, by: &[GroupBy], county: Option<&County>) -> EventAggregate {
    if !by.contains(&GroupBy::Town) {
        return agg;
    }
    let n_dims = by.len() - 1;
    let town_of = |site: &str, device: &str, camera: &str| -> String {
        let id = format!("{site}/{device}/{camera}");
        county
            .and_then(|c| c.cameras.iter().find(|cam| cam.id == id))
            .and_then(|cam| cam.placed.town.clone())
            .unwrap_or_default()
    };
    let mut merged: std::collections::BTreeMap<
        Vec<String>,
        (u64, std::collections::BTreeMap<i64, u64>),
    > = Default::default();
    for g in agg.groups {
        let (dims, src) = g.key.split_at(n_dims.min(g.key.len()));
        let town = match src {
            [site, device, camera] => town_of(site, device, camera),
            _ => String::new(),
        };
        let mut dims = dims.iter();
        let key: Vec<String> = by
            .iter()
            .map(|b| match b {
                GroupBy::Town => town.clone(),
                GroupBy::Dim(_) => dims.next().cloned().unwrap_or_default(),
            })
            .collect();
        let e = merged.entry(key).or_default();
        e.0 += g.total;
        for (t, c) in g.buckets {
            *e.1.entry(t).or_default() += c;
        }
    }
    let mut groups: Vec<AggregateGroup> = merged
        .into_iter()
        .map(|(key, (total, b))| AggregateGroup {
            key,
            total,
            buckets: b.into_iter().collect(),
        })
        .collect();
    groups.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
    EventAggregate {
        total: agg.total,
        groups,
    }
}

/// Event counts over a time range, grouped.
#[derive(Serialize, JsonSchema)]
pub struct AggregateBody {
    /// The range counted, Unix ms: `from_ms` inclusive, `to_ms` exclusive.
    from_ms: i64,
    to_ms: i64,
    /// The bucket size in ms; `null` without `bucket`.
    bucket_ms: Option<i64>,
    /// The dimensions of each group's `key`, in order.
    by: Vec<&'static str>,
    /// Events in the range that match the filters.
    total: u64,
    /// Groups by descending total.
    groups: Vec<AggregateGroup>,
}

pub(crate) fn aggregate_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("aggregateEvents")
        .tag("events")
        .summary("Event counts grouped by dimensions and time bucket")
        .description(
            "What the cockpit's charts are made of: events in [`from`, `to`) matching the \
             filters, counted per group of `by` dimensions and per `bucket`.",
        );
    store_errors(viewer(errors(op, &[BAD_PARAMETER])))
}

/// `from` defaults to `to` − 24 h, `to` to now; `by` a comma list (≤ 3) of town, site,
/// device, camera, kind, event_type, zone, category, phase; `bucket` e.g. `1h`.
pub(crate) async fn events_aggregate<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<AggregateParams>,
) -> Result<Json<AggregateBody>, ApiError> {
    let now_ms = csb_wire::now_ms();
    let county = st.county.as_deref();
    let (q, by) = parse_aggregate_query(p, county, now_ms)?;
    let (from_ms, to_ms, bucket_ms) = (q.from_ms, q.to_ms, q.bucket_ms);
    let agg = store_call(
        &st.store_slots,
        "event aggregate",
        st.store.aggregate_events(q),
    )
    .await?;
    let agg = regroup(agg, &by, county);
    Ok(Json(AggregateBody {
        from_ms,
        to_ms,
        bucket_ms,
        by: by.iter().map(|g| g.name()).collect(),
        total: agg.total,
        groups: agg.groups,
    }))
}
