//! Telemetry series routes (see [`crate::storage::series`]):
//!
//! - `GET /api/v1/telemetry/series?site=&device=&source=&metric=&limit=` — series with
//!   first/last time and count of points received
//! - `GET /api/v1/telemetry/series/query?site=&device=&source=&metric=&from=&to=&resolution=&limit=`
//!   — one series' raw points `{t, v}` or buckets `{t, min, max, mean, count}`, oldest first;
//!   `resolution` is `raw`, `1m`, `1h` or `auto` (default: at most ~2000 points)
//!
//! Reads: role viewer under `[auth] http = "required"` (the default for GET in `POLICY`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{
    clip, level_param, parse_params, store_call, time_param, ApiError, ApiState, ParamError,
};
use crate::storage::series::{
    Resolution, SeriesFilter, SeriesQuery, DEFAULT_QUERY_POINTS, MAX_QUERY_POINTS, MAX_SERIES,
};
use crate::storage::store::Store;

const LIST_PARAMS: [&str; 5] = ["site", "device", "source", "metric", "limit"];
const QUERY_PARAMS: [&str; 8] = [
    "site",
    "device",
    "source",
    "metric",
    "from",
    "to",
    "resolution",
    "limit",
];
/// Default `limit` of the series list.
const DEFAULT_LIST: usize = 1000;
/// Default range of a query without `from`: the last day.
const DEFAULT_SPAN_MS: i64 = 86_400_000;

fn metric_param(v: &str) -> Result<Option<String>, ParamError> {
    // The wire's bound on metric names.
    if v.is_empty() || v.len() > 128 {
        return Err("must be a metric name of 1..=128 bytes".into());
    }
    Ok(Some(v.to_string()))
}

fn count_param(v: &str, max: usize, default: usize) -> Result<usize, ParamError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ParamError::Bad(format!(
                "`{}` is not a number in 1..={max} (default {default})",
                clip(v)
            ))
        })
}

pub fn parse_list(pairs: &[(String, String)]) -> Result<SeriesFilter, ApiError> {
    let mut f = SeriesFilter {
        limit: DEFAULT_LIST,
        ..SeriesFilter::default()
    };
    parse_params(pairs, &LIST_PARAMS, |name, v| {
        match name {
            "site" => f.site = level_param("site", v)?,
            "device" => f.device = level_param("device", v)?,
            "source" => f.source = level_param("source", v)?,
            "metric" => f.metric = metric_param(v)?,
            "limit" => f.limit = count_param(v, MAX_SERIES, DEFAULT_LIST)?,
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    Ok(f)
}

pub fn parse_query(pairs: &[(String, String)], now_ms: i64) -> Result<SeriesQuery, ApiError> {
    let (mut site, mut device, mut source, mut metric) = (None, None, None, None);
    let (mut from, mut to, mut resolution) = (None, None, None);
    let mut limit = DEFAULT_QUERY_POINTS;
    parse_params(pairs, &QUERY_PARAMS, |name, v| {
        match name {
            "site" => site = level_param("site", v)?,
            "device" => device = level_param("device", v)?,
            "source" => source = level_param("source", v)?,
            "metric" => metric = metric_param(v)?,
            "from" => from = time_param(v)?,
            "to" => to = time_param(v)?,
            "resolution" => {
                resolution = match v {
                    "raw" => Some(Resolution::Raw),
                    "1m" => Some(Resolution::Minute),
                    "1h" => Some(Resolution::Hour),
                    "auto" => None,
                    _ => return Err(format!("`{}` is not raw, 1m, 1h or auto", clip(v)).into()),
                }
            }
            "limit" => limit = count_param(v, MAX_QUERY_POINTS, DEFAULT_QUERY_POINTS)?,
            _ => return Err(ParamError::Unknown),
        }
        Ok(())
    })?;
    let need = |what: &str, v: Option<String>| {
        v.ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `{what}` is required (list series with /api/v1/telemetry/series)"
            ))
        })
    };
    let to_ms = to.unwrap_or(now_ms.saturating_add(1));
    let from_ms = from.unwrap_or(to_ms.saturating_sub(DEFAULT_SPAN_MS));
    if from_ms >= to_ms {
        return Err(ApiError::bad_request(
            "query parameter `from` must be earlier than `to` (`to` is exclusive)",
        ));
    }
    Ok(SeriesQuery {
        site: need("site", site)?,
        device: need("device", device)?,
        source: need("source", source)?,
        metric: need("metric", metric)?,
        from_ms,
        to_ms,
        resolution,
        limit,
    })
}

pub(super) async fn list<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let f = parse_list(&pairs)?;
    let (series, truncated) =
        store_call(&st.store_slots, "series list", st.store.list_series(f)).await?;
    Ok(Json(json!({
        "count": series.len(),
        "truncated": truncated,
        "series": series,
    })))
}

pub(super) async fn query<S: Store>(
    State(st): State<ApiState<S>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let q = parse_query(&pairs, csb_wire::now_ms())?;
    let series =
        json!({"site": q.site, "device": q.device, "source": q.source, "metric": q.metric});
    let (from, to) = (q.from_ms, q.to_ms);
    let data = store_call(&st.store_slots, "series query", st.store.query_series(q))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no telemetry series {}/{}/{}/{}",
                series["site"].as_str().unwrap_or_default(),
                series["device"].as_str().unwrap_or_default(),
                series["source"].as_str().unwrap_or_default(),
                clip(series["metric"].as_str().unwrap_or_default()),
            ))
        })?;
    let count = data
        .points
        .as_ref()
        .map(Vec::len)
        .or(data.buckets.as_ref().map(Vec::len))
        .unwrap_or(0);
    let mut body = json!({
        "series": series,
        "from": from,
        "to": to,
        "count": count,
    });
    if let (Value::Object(b), Ok(Value::Object(d))) = (&mut body, serde_json::to_value(&data)) {
        b.extend(d);
    }
    Ok(Json(body))
}
