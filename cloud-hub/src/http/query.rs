//! Query parameters as typed structs.
//!
//! Each endpoint takes one struct (`#[derive(Deserialize, JsonSchema)]`) through [`Params`]:
//! serde_html_form decodes the query string into it, `serde_path_to_error` names the parameter
//! whose value was refused, and the same struct's JSON Schema documents the parameters in the
//! OpenAPI document (`crate::http::openapi`). The value types below parse from the query text
//! and keep the API's error messages word for word.
//!
//! What no library says in the API's words is this thin adapter: a parameter the struct does not
//! have is refused listing those it has, a repeated one is refused (its meaning would be
//! ambiguous), and every refusal names the parameter. How a refusal is worded and answered is
//! the API's [`Style`]: the REST API's `{"error"}` ([`Rest`]), NGSI-LD's ProblemDetails.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use csb_wire::{EventKind, Phase};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;

use crate::http::error::{clip, ApiError};
use crate::support::timeparse::parse_time_ms;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFault {
    /// Not a form-urlencoded query string.
    Malformed(String),
    /// A parameter the endpoint does not take; `known` lists those it does.
    Unknown {
        name: String,
        known: &'static [&'static str],
    },
    /// A parameter given more than once.
    Repeated(String),
    /// A parameter whose value was refused.
    Bad { name: String, detail: String },
}

/// Whether a repeated parameter is refused, or its last value taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    Refuse,
    LastWins,
}

/// How an API words and answers a refused query string.
pub trait Style {
    type Rejection: IntoResponse;
    const REPEATS: Repeats = Repeats::Refuse;
    fn reject(fault: QueryFault) -> Self::Rejection;
}

/// The REST API's wording: `{"error": "query parameter `limit`: …"}`.
pub enum Rest {}

impl Style for Rest {
    type Rejection = ApiError;
    fn reject(fault: QueryFault) -> ApiError {
        ApiError::bad_request(match fault {
            QueryFault::Malformed(e) => format!("malformed query string: {e}"),
            QueryFault::Unknown { name, known } => format!(
                "unknown query parameter `{}` (known: {})",
                clip(&name),
                known.join(", ")
            ),
            QueryFault::Repeated(name) => format!("query parameter `{name}` given more than once"),
            QueryFault::Bad { name, detail } => format!("query parameter `{name}`: {detail}"),
        })
    }
}

/// The query string decoded into `T`, refusals worded by `S`.
pub struct Params<T, S = Rest>(pub T, pub PhantomData<S>);

impl<T, S, St> FromRequestParts<St> for Params<T, S>
where
    T: DeserializeOwned,
    S: Style,
    St: Send + Sync,
{
    type Rejection = S::Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or(""), S::REPEATS)
            .map(|t| Params(t, PhantomData))
            .map_err(S::reject)
    }
}

/// The parameters of `T` in the OpenAPI document: one per field, its schema and description
/// from `T`'s JSON Schema; a 400 (worded by `S`) for a refused query string.
impl<T: JsonSchema, S: Style> aide::OperationInput for Params<T, S> {
    fn operation_input(ctx: &mut aide::generate::GenContext, op: &mut aide::openapi::Operation) {
        let schema = ctx.schema.subschema_for::<T>();
        let mut params = aide::operation::parameters_from_schema(
            ctx,
            schema,
            aide::operation::ParamLocation::Query,
        );
        // A query string has no null: aide drops `null` from types, not from enums.
        for p in &mut params {
            if let aide::openapi::ParameterSchemaOrContent::Schema(s) =
                &mut p.parameter_data_mut().format
            {
                if let Some(serde_json::Value::Array(e)) = s.json_schema.get_mut("enum") {
                    e.retain(|v| !v.is_null());
                }
            }
        }
        aide::operation::add_parameters(ctx, op, params);
    }
}

/// Decodes a query string into `T`: unknown and (with [`Repeats::Refuse`]) repeated parameters
/// are refused first, then each value is parsed by its field's type.
pub fn parse<T: DeserializeOwned>(raw: &str, repeats: Repeats) -> Result<T, QueryFault> {
    let pairs: Vec<(String, String)> =
        serde_html_form::from_str(raw).map_err(|e| QueryFault::Malformed(e.to_string()))?;
    let known = fields::<T>();
    let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
    let mut repeated = false;
    for (name, _) in &pairs {
        if !known.contains(&name.as_str()) {
            return Err(QueryFault::Unknown {
                name: name.clone(),
                known,
            });
        }
        if seen.contains(&name.as_str()) {
            if repeats == Repeats::Refuse {
                return Err(QueryFault::Repeated(name.clone()));
            }
            repeated = true;
        }
        seen.push(name);
    }
    if repeated {
        // The last value of each name, in the order of their first appearance.
        let mut last: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match last.iter_mut().find(|(n, _)| *n == k) {
                Some(slot) => slot.1 = v,
                None => last.push((k, v)),
            }
        }
        let raw =
            serde_html_form::to_string(&last).map_err(|e| QueryFault::Malformed(e.to_string()))?;
        return decode(&raw);
    }
    decode(raw)
}

/// [`parse`] of already split pairs (tests, and callers that hold pairs).
pub fn from_pairs<T: DeserializeOwned>(
    pairs: &[(String, String)],
    repeats: Repeats,
) -> Result<T, QueryFault> {
    let raw =
        serde_html_form::to_string(pairs).map_err(|e| QueryFault::Malformed(e.to_string()))?;
    parse(&raw, repeats)
}

fn decode<T: DeserializeOwned>(raw: &str) -> Result<T, QueryFault> {
    serde_path_to_error::deserialize(serde_html_form::Deserializer::from_bytes(raw.as_bytes()))
        .map_err(|e| {
            let name = e.path().to_string();
            let detail = e.into_inner().to_string();
            if name.is_empty() || name == "." {
                QueryFault::Malformed(detail)
            } else {
                QueryFault::Bad { name, detail }
            }
        })
}

/// The parameter names of `T`, as serde sees them (renames included): serde hands a struct's
/// field list to the deserializer, so a probe that only records it is enough.
pub fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Deserializes a query value from its text with `parse`, whose message is the refusal's detail.
pub fn from_text<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    parse(&s).map_err(de::Error::custom)
}

/// What a [`Checked`] string must be.
pub trait Check {
    fn check(v: &str) -> Result<(), String>;
    fn schema() -> Schema;
}

/// A string value that passed `C`'s check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<C>(pub String, PhantomData<C>);

impl<C> Checked<C> {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<'de, C: Check> Deserialize<'de> for Checked<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            C::check(v).map(|()| Checked(v.to_string(), PhantomData))
        })
    }
}

impl<C: Check> JsonSchema for Checked<C> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::any::type_name::<C>()
            .rsplit("::")
            .next()
            .unwrap_or("Checked")
            .to_string()
            .into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        C::schema()
    }
}

/// A topic level (site, device, camera, sensor …): the same rules as on the wire, so a value
/// that could never be stored is refused rather than silently matching nothing.
macro_rules! level {
    ($t:ident, $what:literal) => {
        #[doc = concat!("A `", $what, "` topic level.")]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $t {}
        impl Check for $t {
            fn check(v: &str) -> Result<(), String> {
                csb_wire::topic::validate_level($what, v).map_err(|e| e.to_string())
            }
            fn schema() -> Schema {
                level_schema()
            }
        }
    };
}
level!(Site, "site");
level!(Device, "device");
level!(Camera, "camera");
// Sensor id, camera id or `agent`: a topic level on the wire.
level!(Source, "source");

/// A topic level's schema: what `csb_wire::topic::validate_level` takes.
pub fn level_schema() -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[A-Za-z0-9._-]+$",
    })
}

/// Text of 1..=`$max` bytes.
macro_rules! text {
    ($t:ident, $max:literal, $noun:literal) => {
        #[doc = concat!(
            "Text of 1..=", stringify!($max), " bytes: ", $noun, "."
        )]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $t {}
        impl Check for $t {
            fn check(v: &str) -> Result<(), String> {
                if v.is_empty() || v.len() > $max {
                    return Err(format!(
                        concat!("must be ", $noun, " of 1..={} bytes"),
                        $max
                    ));
                }
                Ok(())
            }
            fn schema() -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "description": concat!(
                        $noun, " (1..=", stringify!($max), " bytes of UTF-8)"
                    ),
                })
            }
        }
    };
}
text!(ClassName, 64, "a label or class id");
text!(EventType, 64, "a rule event type");
text!(ZoneId, 64, "a zone id");
text!(CategoryCode, 64, "a category code");
// The wire's bound on metric names, so no stored name is unreachable.
text!(MetricName, 128, "a metric name");

/// A time: Unix milliseconds or RFC 3339 (`2026-09-21T08:30:00.250+08:00`), as Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub i64);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| parse_time_ms(v).map(Time).map_err(|e| e.to_string()))
    }
}

impl JsonSchema for Time {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Time".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        time_schema()
    }
}

/// Unix milliseconds or an RFC 3339 time.
pub fn time_schema() -> Schema {
    json_schema!({
        "type": "string",
        "description": "Unix milliseconds (e.g. 1790000000000) or an RFC 3339 time (e.g. \
                        2026-09-21T08:30:00Z)",
        "anyOf": [
            {"pattern": "^[0-9]{1,18}$"},
            {"format": "date-time"},
        ],
    })
}

/// A count in 1..=`MAX`, `DEFAULT` when absent (`limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<const MAX: usize, const DEFAULT: usize>(pub usize);

impl<const MAX: usize, const DEFAULT: usize> Count<MAX, DEFAULT> {
    /// The value, or the default when the parameter was not given.
    pub fn or_default(c: Option<Self>) -> usize {
        c.map_or(DEFAULT, |c| c.0)
    }
}

impl<'de, const MAX: usize, const DEFAULT: usize> Deserialize<'de> for Count<MAX, DEFAULT> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX).contains(n))
                .map(Count)
                .ok_or_else(|| {
                    format!(
                        "`{}` is not a number in 1..={MAX} (default {DEFAULT})",
                        v.chars().take(32).collect::<String>()
                    )
                })
        })
    }
}

impl<const MAX: usize, const DEFAULT: usize> JsonSchema for Count<MAX, DEFAULT> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Count{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": 1,
            "maximum": MAX,
            "default": DEFAULT,
        })
    }
}

/// `detection` or `rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindParam(pub EventKind);

impl<'de> Deserialize<'de> for KindParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| match v {
            "detection" => Ok(KindParam(EventKind::Detection)),
            "rule" => Ok(KindParam(EventKind::Rule)),
            _ => Err(format!("`{}` is not `detection` or `rule`", clip(v))),
        })
    }
}

impl JsonSchema for KindParam {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventKindParam".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "enum": ["detection", "rule"]})
    }
}

/// A rule event's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseParam(pub Phase);

impl<'de> Deserialize<'de> for PhaseParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            Ok(PhaseParam(match v {
                "start" => Phase::Start,
                "update" => Phase::Update,
                "end" => Phase::End,
                "instant" => Phase::Instant,
                _ => {
                    return Err(format!(
                        "`{}` is not one of start, update, end, instant",
                        clip(v)
                    ))
                }
            }))
        })
    }
}

impl JsonSchema for PhaseParam {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PhaseParam".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "enum": ["start", "update", "end", "instant"]})
    }
}

/// An empty range is a client mistake worth naming, not an empty answer.
pub fn check_time_range(from_ms: Option<i64>, to_ms: Option<i64>) -> Result<(), ApiError> {
    match (from_ms, to_ms) {
        (Some(from), Some(to)) if from >= to => Err(ApiError::bad_request(
            "query parameter `from` must be earlier than `to` (`to` is exclusive)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Query pairs from string slices.
    pub fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct P {
        site: Option<Checked<Site>>,
        limit: Option<Count<10, 5>>,
        #[serde(rename = "timeAt")]
        time_at: Option<Time>,
    }

    #[test]
    fn fields_come_from_serde() {
        assert_eq!(fields::<P>(), ["site", "limit", "timeAt"]);
    }

    #[test]
    fn refusals_name_the_parameter() {
        let p: P = parse("site=yuexi&limit=7&timeAt=1000", Repeats::Refuse).unwrap();
        assert_eq!(p.site.unwrap().0, "yuexi");
        assert_eq!(p.limit, Some(Count(7)));
        assert_eq!(p.time_at, Some(Time(1000)));
        let e = parse::<P>("limit=0", Repeats::Refuse).unwrap_err();
        assert_eq!(
            e,
            QueryFault::Bad {
                name: "limit".into(),
                detail: "`0` is not a number in 1..=10 (default 5)".into()
            }
        );
        let e = parse::<P>("site=a%20b", Repeats::Refuse).unwrap_err();
        assert!(
            matches!(&e, QueryFault::Bad { name, detail }
            if name == "site" && detail.contains("site `a b`")),
            "{e:?}"
        );
        // An empty value is a value, not an absent parameter.
        assert!(matches!(
            parse::<P>("site=", Repeats::Refuse),
            Err(QueryFault::Bad { .. })
        ));
        assert_eq!(
            parse::<P>("bogus=1", Repeats::Refuse).unwrap_err(),
            QueryFault::Unknown {
                name: "bogus".into(),
                known: &["site", "limit", "timeAt"]
            }
        );
        assert_eq!(
            parse::<P>("limit=1&limit=2", Repeats::Refuse).unwrap_err(),
            QueryFault::Repeated("limit".into())
        );
        let p: P = parse("limit=1&site=a&limit=2", Repeats::LastWins).unwrap();
        assert_eq!(p.limit, Some(Count(2)));
        let p: P = parse("", Repeats::Refuse).unwrap();
        assert_eq!(p.site, None);
    }
}
