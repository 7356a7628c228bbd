//! `GET /api/v1/quarantine`: messages ingest refused, newest first, with why (see
//! `crate::storage::quarantine`).

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::Json;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use crate::http::error::{clip, ApiError};
use crate::http::events::BAD_PARAMETER;
use crate::http::openapi::{errors, store_errors, viewer};
use crate::http::query::{
    check_time_range, from_pairs, from_text, Checked, Count, Device, Params, Repeats, Rest, Site,
    Style, Time,
};
use crate::http::state::{store_call, ApiState};
use crate::storage::quarantine::{QuarantineEntry, QuarantineQuery, RejectReason};
use crate::storage::store::{Store, DEFAULT_LIMIT, MAX_LIMIT};

/// Filters of `GET /api/v1/quarantine`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct QuarantineParams {
    /// Why the messages were refused.
    reason: Option<ReasonParam>,
    /// Site, from the message's topic.
    site: Option<Checked<Site>>,
    /// Device, from the message's topic.
    device: Option<Checked<Device>>,
    /// Earliest receive time, inclusive.
    from: Option<Time>,
    /// Latest receive time, exclusive.
    to: Option<Time>,
    /// Most entries returned.
    limit: Option<Count<MAX_LIMIT, DEFAULT_LIMIT>>,
}

/// A [`RejectReason`] by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonParam(pub RejectReason);

impl<'de> Deserialize<'de> for ReasonParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            RejectReason::parse(v).map(ReasonParam).ok_or_else(|| {
                let known: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
                format!("`{}` is not one of {}", clip(v), known.join(", "))
            })
        })
    }
}

impl JsonSchema for ReasonParam {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RejectReason".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        RejectReason::json_schema(g)
    }
}

impl QuarantineParams {
    fn into_query(self) -> Result<QuarantineQuery, ApiError> {
        let q = QuarantineQuery {
            reason: self.reason.map(|r| r.0),
            site: self.site.map(Checked::into_string),
            device: self.device.map(Checked::into_string),
            from_ms: self.from.map(|t| t.0),
            to_ms: self.to.map(|t| t.0),
            limit: Count::or_default(self.limit),
        };
        check_time_range(q.from_ms, q.to_ms)?;
        Ok(q)
    }
}

/// Turns query pairs into a [`QuarantineQuery`]; every error names its parameter.
pub fn parse_quarantine_query(pairs: &[(String, String)]) -> Result<QuarantineQuery, ApiError> {
    from_pairs::<QuarantineParams>(pairs, Repeats::Refuse)
        .map_err(Rest::reject)?
        .into_query()
}

/// Same envelope as [`crate::http::events::EventsBody`].
#[derive(Serialize, JsonSchema)]
pub struct QuarantineBody {
    /// Newest first.
    quarantine: Vec<QuarantineEntry>,
    /// Entries in this answer.
    count: usize,
    /// The scan limit was reached before `limit` matches were found: narrow the time range.
    truncated: bool,
}

pub(crate) fn quarantine_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("listQuarantine")
        .tag("quarantine")
        .summary("Refused messages, newest first")
        .description(
            "Every message ingest refused (oversized, not JSON, schema, version, bad topic, \
             device mismatch, spoofed) with the reason, a detail naming the field, and the \
             first bytes of the payload.",
        );
    store_errors(viewer(errors(op, &[BAD_PARAMETER])))
}

pub(crate) async fn quarantine<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<QuarantineParams>,
) -> Result<Json<QuarantineBody>, ApiError> {
    let q = p.into_query()?;
    let page = store_call(
        &st.store_slots,
        "quarantine query",
        st.store.query_quarantine(q),
    )
    .await?;
    Ok(Json(QuarantineBody {
        count: page.entries.len(),
        truncated: page.truncated,
        quarantine: page.entries,
    }))
}

#[cfg(test)]
mod quarantine_query_tests {
    use super::*;
    use crate::http::query::tests::pairs;

    fn err(q: &[(&str, &str)]) -> String {
        parse_quarantine_query(&pairs(q)).unwrap_err().message
    }

    #[test]
    fn parses_quarantine_parameters() {
        let q = parse_quarantine_query(&pairs(&[
            ("reason", "device_mismatch"),
            ("site", "yuexi"),
            ("device", "gw-01"),
            ("from", "2026-09-21T08:30:00Z"),
            ("to", "1789979500000"),
            ("limit", "7"),
        ]))
        .unwrap();
        assert_eq!(
            q,
            QuarantineQuery {
                reason: Some(RejectReason::DeviceMismatch),
                site: Some("yuexi".into()),
                device: Some("gw-01".into()),
                from_ms: Some(1_789_979_400_000),
                to_ms: Some(1_789_979_500_000),
                limit: 7,
            }
        );
        assert_eq!(
            parse_quarantine_query(&[]).unwrap(),
            QuarantineQuery::default()
        );
        for r in RejectReason::ALL {
            let q = parse_quarantine_query(&pairs(&[("reason", r.as_str())])).unwrap();
            assert_eq!(q.reason, Some(r));
        }
    }

    #[test]
    fn quarantine_errors_name_the_parameter() {
        let e = err(&[("reason", "json")]);
        assert!(e.contains("`reason`") && e.contains("not_json"), "{e}");
        assert!(err(&[("device", "a b")]).contains("`device`"));
        assert!(err(&[("site", "")]).contains("`site`"));
        assert!(err(&[("from", "soon")]).contains("`from`"));
        assert!(err(&[("to", "x")]).contains("`to`"));
        assert!(err(&[("limit", "0")]).contains("`limit`"));
        assert!(err(&[("limit", "1001")]).contains("`limit`"));
        assert!(err(&[("camera", "cam-01")]).contains("`camera`"));
        assert!(err(&[("reason", "schema"), ("reason", "version")]).contains("more than once"));
        assert!(err(&[("from", "2000"), ("to", "1000")]).contains("`from`"));
    }
}
