//! Raw telemetry: `GET /api/v1/telemetry`, each message as received, newest first. Series and
//! rollups of its metrics are in [`crate::http::series`].

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::http::error::ApiError;
use crate::http::events::BAD_PARAMETER;
use crate::http::openapi::{errors, store_errors, viewer};
use crate::http::query::{
    check_time_range, from_pairs, Checked, Count, Device, MetricName, Params, Repeats, Rest, Site,
    Source, Style, Time,
};
use crate::http::state::{store_call, ApiState};
use crate::storage::store::{Store, TelemetryQuery, DEFAULT_LIMIT, MAX_LIMIT};

/// Filters of `GET /api/v1/telemetry`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct TelemetryParams {
    /// Site of the device.
    site: Option<Checked<Site>>,
    /// The device (gateway) that sent the message.
    device: Option<Checked<Device>>,
    /// A sensor id, a camera id or `agent`.
    source: Option<Checked<Source>>,
    /// Keeps messages whose `metrics` hold this name (e.g. `water_level_cm`, `cam-01.fps`);
    /// each still comes with all its metrics.
    metric: Option<Checked<MetricName>>,
    /// Earliest message time, inclusive.
    from: Option<Time>,
    /// Latest message time, exclusive.
    to: Option<Time>,
    /// Most messages returned.
    limit: Option<Count<MAX_LIMIT, DEFAULT_LIMIT>>,
}

impl TelemetryParams {
    fn into_query(self) -> Result<TelemetryQuery, ApiError> {
        let q = TelemetryQuery {
            site: self.site.map(Checked::into_string),
            device: self.device.map(Checked::into_string),
            source: self.source.map(Checked::into_string),
            metric: self.metric.map(Checked::into_string),
            from_ms: self.from.map(|t| t.0),
            to_ms: self.to.map(|t| t.0),
            limit: Count::or_default(self.limit),
        };
        check_time_range(q.from_ms, q.to_ms)?;
        Ok(q)
    }
}

/// Turns query pairs into a [`TelemetryQuery`]; every error names its parameter.
pub fn parse_telemetry_query(pairs: &[(String, String)]) -> Result<TelemetryQuery, ApiError> {
    from_pairs::<TelemetryParams>(pairs, Repeats::Refuse)
        .map_err(Rest::reject)?
        .into_query()
}

/// Same envelope as [`crate::http::events::EventsBody`]; each item is a whole wire message,
/// all its metrics included.
#[derive(Serialize, JsonSchema)]
pub struct TelemetryBody {
    /// Newest first.
    telemetry: Vec<csb_wire::Telemetry>,
    /// Messages in this answer.
    count: usize,
    /// The scan limit was reached before `limit` matches were found: narrow the time range.
    truncated: bool,
}

pub(crate) fn telemetry_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listTelemetry")
        .tag("telemetry")
        .summary("Raw telemetry as received, newest first");
    store_errors(viewer(errors(op, &[BAD_PARAMETER])))
}

pub(crate) async fn telemetry<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<TelemetryParams>,
) -> Result<Json<TelemetryBody>, ApiError> {
    let q = p.into_query()?;
    let page = store_call(
        &st.store_slots,
        "telemetry query",
        st.store.query_telemetry(q),
    )
    .await?;
    Ok(Json(TelemetryBody {
        count: page.telemetry.len(),
        truncated: page.truncated,
        telemetry: page.telemetry,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::tests::pairs;

    fn tel_err(q: &[(&str, &str)]) -> String {
        parse_telemetry_query(&pairs(q)).unwrap_err().message
    }

    #[test]
    fn parses_telemetry_parameters() {
        let q = parse_telemetry_query(&pairs(&[
            ("site", "yuexi"),
            ("device", "gw-01"),
            ("source", "wl-01"),
            ("metric", "cam-01.fps"),
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            TelemetryQuery {
                site: Some("yuexi".into()),
                device: Some("gw-01".into()),
                source: Some("wl-01".into()),
                metric: Some("cam-01.fps".into()),
                from_ms: Some(1_789_979_400_000),
                to_ms: Some(1_789_979_500_000),
                limit: 5,
            }
        );
        assert_eq!(
            parse_telemetry_query(&[]).unwrap(),
            TelemetryQuery::default()
        );
    }

    #[test]
    fn telemetry_errors_name_the_parameter() {
        assert!(tel_err(&[("limit", "0")]).contains("`limit`"));
        assert!(tel_err(&[("limit", "1001")]).contains("`limit`"));
        assert!(tel_err(&[("from", "yesterday")]).contains("`from`"));
        assert!(tel_err(&[("to", "2026-13-01T00:00:00Z")]).contains("`to`"));
        assert!(tel_err(&[("site", "")]).contains("`site`"));
        assert!(tel_err(&[("device", "a/b")]).contains("`device`"));
        assert!(tel_err(&[("source", "a b")]).contains("`source`"));
        assert!(tel_err(&[("metric", "")]).contains("`metric`"));
        assert!(tel_err(&[("metric", &"m".repeat(129))]).contains("`metric`"));
        // Event-only parameters are unknown here, and the message lists the known ones.
        let e = tel_err(&[("camera", "cam-01")]);
        assert!(
            e.contains("`camera`") && e.contains("source, metric"),
            "{e}"
        );
        assert!(tel_err(&[("source", "a"), ("source", "b")]).contains("more than once"));
        assert!(tel_err(&[("from", "2000"), ("to", "2000")]).contains("`from`"));
    }
}
