//! Telemetry series routes (see [`crate::storage::series`]):
//!
//! - `GET /api/v1/telemetry/series?site=&device=&source=&metric=&limit=` — series with
//!   first/last time and count of points received
//! - `GET /api/v1/telemetry/series/query?site=&device=&source=&metric=&from=&to=&resolution=&limit=`
//!   — one series' raw points `{t, v}` or buckets `{t, min, max, mean, count}`, oldest first;
//!   `resolution` is `raw`, `1m`, `1h` or `auto` (default: at most ~2000 points)
//!
//! Reads: role viewer under `[auth] http = "required"` (the default for GET in `POLICY`).

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::Json;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use crate::http::error::{clip, ApiError};
use crate::http::events::BAD_PARAMETER;
use crate::http::openapi::{errors, store_errors, viewer};
use crate::http::query::{
    from_text, Checked, Count, Device, MetricName, Params, Site, Source, Time,
};
use crate::http::state::{store_call, ApiState};
use crate::storage::series::{
    Resolution, SeriesData, SeriesFilter, SeriesInfo, SeriesQuery, DEFAULT_QUERY_POINTS,
    MAX_QUERY_POINTS, MAX_SERIES,
};
use crate::storage::store::Store;

/// Default `limit` of the series list.
const DEFAULT_LIST: usize = 1000;
/// Default range of a query without `from`: the last day.
const DEFAULT_SPAN_MS: i64 = 86_400_000;

/// Filters of `GET /api/v1/telemetry/series`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ListParams {
    site: Option<Checked<Site>>,
    device: Option<Checked<Device>>,
    /// A sensor id, a camera id or `agent`.
    source: Option<Checked<Source>>,
    metric: Option<Checked<MetricName>>,
    /// Most series returned.
    limit: Option<Count<MAX_SERIES, DEFAULT_LIST>>,
}

/// One series (all four of site, device, source and metric) and the range to read.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct QueryParams {
    #[schemars(required)]
    site: Option<Checked<Site>>,
    #[schemars(required)]
    device: Option<Checked<Device>>,
    /// A sensor id, a camera id or `agent`.
    #[schemars(required)]
    source: Option<Checked<Source>>,
    #[schemars(required)]
    metric: Option<Checked<MetricName>>,
    /// Start, inclusive; default `to` − 24 h.
    from: Option<Time>,
    /// End, exclusive; default now.
    to: Option<Time>,
    /// `raw` points, `1m` or `1h` buckets, or `auto` (default): the finest that keeps the
    /// answer to about `limit` points.
    resolution: Option<ResolutionParam>,
    /// Most points or buckets returned.
    limit: Option<Count<MAX_QUERY_POINTS, DEFAULT_QUERY_POINTS>>,
}

/// `raw`, `1m`, `1h`, or `auto` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolutionParam(Option<Resolution>);

impl<'de> Deserialize<'de> for ResolutionParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            Ok(ResolutionParam(match v {
                "raw" => Some(Resolution::Raw),
                "1m" => Some(Resolution::Minute),
                "1h" => Some(Resolution::Hour),
                "auto" => None,
                _ => return Err(format!("`{}` is not raw, 1m, 1h or auto", clip(v))),
            }))
        })
    }
}

impl JsonSchema for ResolutionParam {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ResolutionParam".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "enum": ["raw", "1m", "1h", "auto"], "default": "auto"})
    }
}

impl ListParams {
    fn into_filter(self) -> SeriesFilter {
        SeriesFilter {
            site: self.site.map(Checked::into_string),
            device: self.device.map(Checked::into_string),
            source: self.source.map(Checked::into_string),
            metric: self.metric.map(Checked::into_string),
            limit: Count::or_default(self.limit),
        }
    }
}

impl QueryParams {
    fn into_query(self, now_ms: i64) -> Result<SeriesQuery, ApiError> {
        fn need<C>(what: &str, v: Option<Checked<C>>) -> Result<String, ApiError> {
            v.map(Checked::into_string).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter `{what}` is required (list series with /api/v1/telemetry/series)"
                ))
            })
        }
        let to_ms = self.to.map_or(now_ms.saturating_add(1), |t| t.0);
        let from_ms = self
            .from
            .map_or(to_ms.saturating_sub(DEFAULT_SPAN_MS), |t| t.0);
        let q = SeriesQuery {
            site: need("site", self.site)?,
            device: need("device", self.device)?,
            source: need("source", self.source)?,
            metric: need("metric", self.metric)?,
            from_ms,
            to_ms,
            resolution: self.resolution.and_then(|r| r.0),
            limit: Count::or_default(self.limit),
        };
        if from_ms >= to_ms {
            return Err(ApiError::bad_request(
                "query parameter `from` must be earlier than `to` (`to` is exclusive)",
            ));
        }
        Ok(q)
    }
}

#[derive(Serialize, JsonSchema)]
pub struct SeriesListBody {
    /// Series in this answer.
    count: usize,
    /// More series match than `limit`.
    truncated: bool,
    series: Vec<SeriesInfo>,
}

/// Which series a query read.
#[derive(Serialize, JsonSchema)]
pub struct SeriesKey {
    site: String,
    device: String,
    source: String,
    metric: String,
}

#[derive(Serialize, JsonSchema)]
pub struct SeriesQueryBody {
    series: SeriesKey,
    /// The range read, Unix ms: `from` inclusive, `to` exclusive.
    from: i64,
    to: i64,
    /// Points or buckets in this answer.
    count: usize,
    #[serde(flatten)]
    data: SeriesData,
}

pub(crate) fn list_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listSeries")
        .tag("telemetry")
        .summary("Telemetry series, with the time span and count of points received");
    store_errors(viewer(errors(op, &[BAD_PARAMETER])))
}

pub(crate) fn query_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("querySeries")
        .tag("telemetry")
        .summary("One series' points or rollup buckets, oldest first");
    store_errors(viewer(errors(
        op,
        &[
            BAD_PARAMETER,
            (404, "No telemetry series with these four names"),
        ],
    )))
}

pub(crate) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<ListParams>,
) -> Result<Json<SeriesListBody>, ApiError> {
    let f = p.into_filter();
    let (series, truncated) =
        store_call(&st.store_slots, "series list", st.store.list_series(f)).await?;
    Ok(Json(SeriesListBody {
        count: series.len(),
        truncated,
        series,
    }))
}

pub(crate) async fn query<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<QueryParams>,
) -> Result<Json<SeriesQueryBody>, ApiError> {
    let q = p.into_query(csb_wire::now_ms())?;
    let series = SeriesKey {
        site: q.site.clone(),
        device: q.device.clone(),
        source: q.source.clone(),
        metric: q.metric.clone(),
    };
    let (from, to) = (q.from_ms, q.to_ms);
    let data = store_call(&st.store_slots, "series query", st.store.query_series(q))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no telemetry series {}/{}/{}/{}",
                series.site,
                series.device,
                series.source,
                clip(&series.metric),
            ))
        })?;
    let count = data
        .points
        .as_ref()
        .map(Vec::len)
        .or(data.buckets.as_ref().map(Vec::len))
        .unwrap_or(0);
    Ok(Json(SeriesQueryBody {
        series,
        from,
        to,
        count,
        data,
    }))
}
