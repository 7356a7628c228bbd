//! Open311 GeoReport v2 (<https://wiki.open311.org/GeoReport_v2>) for citizen reporting apps,
//! under `/open311/v2/`: a citizen's request becomes a case of the governance workflow, and the
//! case's state comes back as the request's status.
//!
//! - `GET services.{json,xml}`: every governance category is a service. `service_code` is the
//!   category's GB/T 47678.5-2026 code (its GB/T 30428.2 code, else its id, where it has none);
//!   lookups take any of the three. `metadata` is false (no service has attributes), `type`
//!   realtime, `group` 事件 or 部件. `GET services/{code}.{json,xml}`: its definition (no
//!   attributes).
//! - `POST requests.{json,xml}`, form-urlencoded as the spec says, or a JSON object of the same
//!   fields (`attribute` may then be an object): opens a case at 上报 with source `citizen`
//!   ([`Engine::report_citizen`]). Its place is the point: the county model's town whose polygon
//!   holds it, and a zone if one does, so that dispatch routes it by location; a point in no
//!   town is refused (nobody could be dispatched to it). `address_string` alone is taken too
//!   (the operator places it). Description, photo URL, address, contact fields, device and
//!   account ids and attributes are stored with the case; contact fields are for the operators
//!   and never published back. Answer: `201` and `[{"service_request_id", "service_notice",
//!   "account_id": null}]`.
//! - `GET requests.{json,xml}`: citizen cases only (camera and sensor cases are the county's own
//!   and not published), newest first, at most 1000; filters `service_request_id` (a comma list,
//!   which overrides the others), `service_code` (comma list), `status` (`open`, `closed`),
//!   `start_date`/`end_date` (W3C date-times; the range defaults to the last 90 days and may
//!   not span more). `GET requests/{id}.{json,xml}`: one, as a list of one.
//!
//! A request is `open` until its case is 结案, 不予立案 or 作废 (`closed`). `status_notes` is the
//! latest note a person wrote on the case (the closing note, a rejection's reason and note), so
//! operators write those notes for the citizen; notes on 督办 and extensions stay internal.
//! `expected_datetime` is the running stage's deadline (the handling deadline once
//! dispatched), `agency_responsible` the department it is dispatched to. Times are ISO 8601 in
//! the governance calendar's offset (+08:00). `locale=en` (or `Accept-Language: en`) gives
//! English names and notices; Chinese is the default.
//!
//! Access: the reads are public, as Open311 servers' are, also with `[auth] http = "required"`
//! (the access policy leaves `/open311/v2/` open): they publish only what citizens sent and the
//! public status. A `POST` proves itself with its `api_key`: with `http = "required"` it must be
//! a hub API token (`cloud-hub token add`) whose role may report (inspector, operator,
//! supervisor, admin), else 403; the token's name is recorded as the reporting client. With
//! `http = "off"` keys are not checked, as no credential is anywhere.
//!
//! Retries: a `POST` that carries a `device_id` and repeats an earlier one of the last 24 hours
//! field for field (same client, same fields) answers that request's id again (`200`) instead
//! of opening a second case — the client's connection may have dropped before the answer.
//! Without a `device_id` each `POST` opens a case; operators reject duplicates (不予立案).
//!
//! Errors are the spec's list, in the call's format, with the matching status: JSON
//! `[{"code": 400, "description": "…"}]`, XML `<errors><error><code>…`. Every problem of a
//! `POST` is listed at once, each naming its field; a refusal is never silent (FixMyStreet
//! #2091): the client gets the list, the hub's log a line (rate-limited).

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aide::axum::routing::{get_with, post_with};
use aide::axum::ApiRouter;
use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, ReferenceOr, RequestBody, SchemaObject};
use aide::transform::TransformOperation;
use aide::{OperationInput, OperationOutput};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use indexmap::IndexMap;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use schemars::{json_schema, JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cases::citizen::{self, Attribute, CitizenReport, Contact};
use crate::cases::config::{Category, Governance, Kind};
use crate::cases::engine::{Engine, EngineError};
use crate::cases::lifecycle::{
    Action, Actor, Case, NewCase, Place, RejectReason, Role as CaseRole, Source, State as CaseState,
};
use crate::cases::sla::{Limit, Unit};
use crate::cases::store::{CaseFilter, SledCases};
use crate::http::cases::blocking;
use crate::http::error::clip;
use crate::http::openapi::{content, respond, schema_of};
use crate::http::query::{parse, Params, QueryFault, Repeats};
use crate::http::state::ApiState;
use crate::http::tokens::Role;
use crate::ingest::metrics::HttpAuthRefusal;
use crate::storage::store::Store;
use crate::support::loglimit::LogLimiter;
use crate::support::timeparse::parse_time_ms;

/// A `POST` body larger than this is refused: a report is a few fields of text.
pub const MAX_BODY: usize = 64 * 1024;
/// The default range of `GET requests`, and the longest one may ask for (the spec's 90 days).
const WINDOW_MS: i64 = 90 * DAY_MS;
const DAY_MS: i64 = 86_400_000;
/// Most requests one `GET requests` answers (the spec's 1000).
const MAX_RESULTS: usize = 1000;
/// Most ids in one `service_request_id` list.
const MAX_IDS: usize = 200;
/// Cases read per store page while listing.
const PAGE: usize = 500;
/// Cases a listing reads at most (camera cases included) before answering what it found, so
/// one query stays inside the store call's time limit.
const MAX_SCANNED: usize = 50_000;
/// How far back a retried `POST` is recognised, and how many recent cases are read for it.
const RETRY_WINDOW_MS: i64 = DAY_MS;
const RETRY_SCAN: usize = 5_000;

/// One report opened at a time: the check for a retried request and the case it opens are
/// one step, so two copies of a request sent at once open one case. Citizen reports are few.
static REPORTING: Mutex<()> = Mutex::new(());
/// Refusals are logged a few lines a minute at most (each client hears of its own).
static REFUSALS_LOG: Mutex<Option<LogLimiter>> = Mutex::new(None);

/// The answer's format, from the path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Json,
    Xml,
}

impl Fmt {
    /// `06010.json` → (`06010`, Json); `None` for another extension.
    fn split(file: &str) -> Option<(&str, Fmt)> {
        if let Some(stem) = file.strip_suffix(".json") {
            Some((stem, Fmt::Json))
        } else {
            file.strip_suffix(".xml").map(|stem| (stem, Fmt::Xml))
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Fmt::Json => "application/json",
            Fmt::Xml => "application/xml; charset=utf-8",
        }
    }
}

/// The format a route answers in (`services.json` vs `services.xml`), as a type.
pub trait Format: Send + Sync + 'static {
    const FMT: Fmt;
}

pub enum AsJson {}
pub enum AsXml {}

impl Format for AsJson {
    const FMT: Fmt = Fmt::Json;
}

impl Format for AsXml {
    const FMT: Fmt = Fmt::Xml;
}

/// The language of names and notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Zh,
    En,
}

/// `locale` if given (`zh`, `zh-CN`, `en_US` …), else the first of `Accept-Language`'s
/// languages (by `q`) that is Chinese or English, else Chinese.
fn lang(locale: Option<&str>, headers: &HeaderMap) -> Result<Lang, String> {
    let of = |tag: &str| {
        let t = tag.trim().to_ascii_lowercase();
        if t.starts_with("en") {
            Some(Lang::En)
        } else if t.starts_with("zh") {
            Some(Lang::Zh)
        } else {
            None
        }
    };
    if let Some(l) = locale {
        return of(l).ok_or_else(|| format!("locale `{}` is not served: use zh or en", clip(l)));
    }
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut tags: Vec<(f32, Lang)> = accept
        .split(',')
        .take(16)
        .filter_map(|part| {
            let mut it = part.split(';');
            let l = of(it.next()?)?;
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (q > 0.0).then_some((q, l))
        })
        .collect();
    // Stable: among equal weights the first listed wins.
    tags.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(tags.first().map_or(Lang::Zh, |t| t.1))
}

// ---------------------------------------------------------------------------------------------
// What the API answers
// ---------------------------------------------------------------------------------------------

/// A service: one category of the governance configuration.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Open311Service")]
pub struct Service {
    /// The category's GB/T 47678.5-2026 code (its GB/T 30428.2 code, else its id, where it has
    /// none). `services/{code}` and `POST requests` also take the other two.
    service_code: String,
    service_name: String,
    /// What it is, its codes, the handling limit and when a report is registered.
    description: String,
    /// Always false: no service has attributes.
    metadata: bool,
    #[serde(rename = "type")]
    kind: ServiceType,
    /// Comma-separated: id, codes, names.
    keywords: String,
    /// 事件 or 部件 (`event` or `component` in English).
    group: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Open311ServiceType")]
pub enum ServiceType {
    /// Requests become cases at once.
    Realtime,
}

/// `GET services/{code}`: the service's attributes (none).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Open311ServiceDefinition")]
pub struct ServiceDefinition {
    service_code: String,
    /// Always empty (`metadata` is false for every service).
    #[schemars(schema_with = "no_attributes")]
    attributes: Vec<serde_json::Value>,
}

fn no_attributes(_: &mut schemars::SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "maxItems": 0})
}

/// The answer to a filed request.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Open311RequestCreated")]
pub struct RequestCreated {
    /// The case id.
    service_request_id: String,
    service_notice: Option<String>,
    /// Always null: the hub keeps no citizen accounts.
    account_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Open311Status")]
pub enum Status {
    Open,
    /// 结案, 不予立案 or 作废.
    Closed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
        }
    }
}

/// A citizen's request as its case stands now.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Open311Request")]
pub struct ServiceRequest {
    /// The case id.
    service_request_id: String,
    status: Status,
    /// The latest note a person wrote on the case for the citizen (the closing note; the
    /// reason a report was not registered).
    status_notes: Option<String>,
    service_name: String,
    service_code: String,
    /// The citizen's words.
    description: Option<String>,
    /// The department the case is dispatched to.
    agency_responsible: Option<String>,
    service_notice: Option<String>,
    /// ISO 8601 with the county's offset.
    requested_datetime: String,
    /// The last change of the case.
    updated_datetime: String,
    /// The running stage's deadline (the handling deadline once dispatched); null when closed
    /// or suspended.
    expected_datetime: Option<String>,
    address: Option<String>,
    lat: Option<f64>,
    long: Option<f64>,
    media_url: Option<String>,
}

/// One error of the spec's error list.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Open311Error")]
pub struct Open311Error {
    /// The HTTP status.
    code: u16,
    /// What was wrong, naming the field or parameter.
    description: String,
}

/// What renders as one XML element of the answer.
trait Xml {
    const TAG: &'static str;
    fn fields(&self, x: &mut XmlOut);
}

impl Xml for Service {
    const TAG: &'static str = "service";
    fn fields(&self, x: &mut XmlOut) {
        x.field("service_code", Some(&self.service_code));
        x.field("service_name", Some(&self.service_name));
        x.field("description", Some(&self.description));
        x.field(
            "metadata",
            Some(if self.metadata { "true" } else { "false" }),
        );
        x.field("type", Some("realtime"));
        x.field("keywords", Some(&self.keywords));
        x.field("group", Some(&self.group));
    }
}

impl Xml for ServiceDefinition {
    const TAG: &'static str = "service_definition";
    fn fields(&self, x: &mut XmlOut) {
        x.field("service_code", Some(&self.service_code));
        x.field("attributes", None);
    }
}

impl Xml for RequestCreated {
    const TAG: &'static str = "request";
    fn fields(&self, x: &mut XmlOut) {
        x.field("service_request_id", Some(&self.service_request_id));
        x.field("service_notice", self.service_notice.as_deref());
        x.field("account_id", self.account_id.as_deref());
    }
}

impl Xml for ServiceRequest {
    const TAG: &'static str = "request";
    fn fields(&self, x: &mut XmlOut) {
        let num = |v: Option<f64>| v.map(|v| v.to_string());
        x.field("service_request_id", Some(&self.service_request_id));
        x.field("status", Some(self.status.as_str()));
        x.field("status_notes", self.status_notes.as_deref());
        x.field("service_name", Some(&self.service_name));
        x.field("service_code", Some(&self.service_code));
        x.field("description", self.description.as_deref());
        x.field("agency_responsible", self.agency_responsible.as_deref());
        x.field("service_notice", self.service_notice.as_deref());
        x.field("requested_datetime", Some(&self.requested_datetime));
        x.field("updated_datetime", Some(&self.updated_datetime));
        x.field("expected_datetime", self.expected_datetime.as_deref());
        x.field("address", self.address.as_deref());
        x.field("lat", num(self.lat).as_deref());
        x.field("long", num(self.long).as_deref());
        x.field("media_url", self.media_url.as_deref());
    }
}

impl Xml for Open311Error {
    const TAG: &'static str = "error";
    fn fields(&self, x: &mut XmlOut) {
        x.field("code", Some(&self.code.to_string()));
        x.field("description", Some(&self.description));
    }
}

/// An XML document written with quick-xml, which escapes the text.
struct XmlOut(quick_xml::Writer<Vec<u8>>);

/// Writing into a `Vec` cannot fail: the `io::Result` is the writer trait's.
fn wrote(r: std::io::Result<()>) {
    debug_assert!(r.is_ok());
}

/// Text as XML 1.0 can carry it: the control characters it cannot (even escaped) become U+FFFD.
fn xml_chars(s: &str) -> std::borrow::Cow<'_, str> {
    let ok = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if s.chars().all(ok) {
        return s.into();
    }
    s.chars()
        .map(|c| if ok(c) { c } else { '\u{FFFD}' })
        .collect::<String>()
        .into()
}

impl XmlOut {
    fn new() -> XmlOut {
        let mut w = quick_xml::Writer::new(Vec::new());
        wrote(w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))));
        XmlOut(w)
    }

    fn open(&mut self, tag: &str) {
        wrote(self.0.write_event(Event::Start(BytesStart::new(tag))));
    }

    fn close(&mut self, tag: &str) {
        wrote(self.0.write_event(Event::End(BytesEnd::new(tag))));
    }

    /// `<tag>value</tag>`, or `<tag/>` for none.
    fn field(&mut self, tag: &str, value: Option<&str>) {
        match value {
            Some(v) => {
                self.open(tag);
                wrote(
                    self.0
                        .write_event(Event::Text(BytesText::new(&xml_chars(v)))),
                );
                self.close(tag);
            }
            None => wrote(self.0.write_event(Event::Empty(BytesStart::new(tag)))),
        }
    }

    fn finish(self) -> String {
        // Only `&str` went in: the bytes are UTF-8.
        String::from_utf8_lossy(&self.0.into_inner()).into_owned()
    }
}

/// An answer: the status, the format and the body already written.
pub struct Reply {
    status: StatusCode,
    fmt: Fmt,
    body: String,
}

impl Reply {
    /// `items` as a JSON array, or as `<root><TAG>…</TAG>…</root>`.
    fn list<T: Serialize + Xml>(status: StatusCode, fmt: Fmt, root: &str, items: &[T]) -> Reply {
        let body = match fmt {
            Fmt::Json => serde_json::to_string(items).unwrap_or_else(|_| "[]".into()),
            Fmt::Xml => {
                let mut x = XmlOut::new();
                x.open(root);
                for i in items {
                    x.open(T::TAG);
                    i.fields(&mut x);
                    x.close(T::TAG);
                }
                x.close(root);
                x.finish()
            }
        };
        Reply { status, fmt, body }
    }

    /// `item` as a JSON object, or as `<TAG>…</TAG>`.
    fn one<T: Serialize + Xml>(status: StatusCode, fmt: Fmt, item: &T) -> Reply {
        let body = match fmt {
            Fmt::Json => serde_json::to_string(item).unwrap_or_else(|_| "{}".into()),
            Fmt::Xml => {
                let mut x = XmlOut::new();
                x.open(T::TAG);
                item.fields(&mut x);
                x.close(T::TAG);
                x.finish()
            }
        };
        Reply { status, fmt, body }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, self.fmt.content_type())],
            self.body,
        )
            .into_response()
    }
}

/// Each operation documents its answers itself (both formats).
impl OperationOutput for Reply {
    type Inner = ();
}

/// A refused or failed call: the spec's error list, in the call's format.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    fmt: Fmt,
    descriptions: Vec<String>,
}

impl Refusal {
    fn new(fmt: Fmt, status: StatusCode, description: impl Into<String>) -> Refusal {
        Refusal {
            status,
            fmt,
            descriptions: vec![description.into()],
        }
    }

    fn bad(fmt: Fmt, description: impl Into<String>) -> Refusal {
        Refusal::new(fmt, StatusCode::BAD_REQUEST, description)
    }

    fn not_found(fmt: Fmt, description: impl Into<String>) -> Refusal {
        Refusal::new(fmt, StatusCode::NOT_FOUND, description)
    }

    /// A refused query string, in the spec's words.
    fn query(fmt: Fmt, fault: QueryFault) -> Refusal {
        Refusal::bad(
            fmt,
            match fault {
                QueryFault::Malformed(e) => format!("malformed query string: {e}"),
                QueryFault::Unknown { name, known } => format!(
                    "unknown parameter `{}` (known: {})",
                    clip(&name),
                    known.join(", ")
                ),
                QueryFault::Repeated(name) => {
                    format!("parameter `{name}` given more than once: list values with commas")
                }
                QueryFault::Bad { name, detail } => format!("parameter `{name}`: {detail}"),
            },
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let list: Vec<Open311Error> = self
            .descriptions
            .into_iter()
            .map(|description| Open311Error { code, description })
            .collect();
        Reply::list(self.status, self.fmt, "errors", &list).into_response()
    }
}

impl OperationOutput for Refusal {
    type Inner = ();
}

/// Logs a refusal (rate-limited): status, what was asked, why.
fn log_refusal(what: &str, r: &Refusal) {
    let mut l = REFUSALS_LOG.lock().unwrap_or_else(|p| p.into_inner());
    let limiter = l.get_or_insert_with(|| LogLimiter::new(10, Duration::from_secs(60)));
    if let Some(suppressed) = limiter.allow(Instant::now()) {
        let why = r.descriptions.join("; ");
        if r.status.is_server_error() {
            tracing::warn!(
                status = r.status.as_u16(),
                what,
                why,
                suppressed,
                "Open311 call failed"
            );
        } else {
            tracing::info!(
                status = r.status.as_u16(),
                what,
                why,
                suppressed,
                "Open311 call refused"
            );
        }
    }
}

/// The query string decoded into `T`, or why not: the handler answers the refusal in its
/// format (known only once the path's extension is read).
pub struct Query311<T>(Result<T, QueryFault>);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Query311<T> {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Infallible> {
        Ok(Query311(parse(
            parts.uri.query().unwrap_or(""),
            Repeats::Refuse,
        )))
    }
}

impl<T: JsonSchema> OperationInput for Query311<T> {
    fn operation_input(ctx: &mut GenContext, op: &mut Operation) {
        <Params<T> as OperationInput>::operation_input(ctx, op)
    }
}

/// `locale` (and the parameters every Open311 call may carry).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct LocaleParams {
    /// `zh` (the default) or `en`: the language of names and notices. Without it the
    /// `Accept-Language` header decides.
    locale: Option<String>,
    /// Taken and ignored: this endpoint serves one jurisdiction, the county.
    #[serde(rename = "jurisdiction_id")]
    _jurisdiction_id: Option<String>,
    /// Taken and ignored on reads, which are public.
    #[serde(rename = "api_key")]
    _api_key: Option<String>,
}

/// Filters of `GET requests`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct RequestsParams {
    /// Comma-separated request ids (at most 200); overrides every other filter.
    service_request_id: Option<String>,
    /// Comma-separated service codes (2026 or legacy codes, or category ids).
    service_code: Option<String>,
    /// Requests filed at or after this W3C date-time (`2026-09-21T08:00:00+08:00`; a date alone
    /// is its midnight in the county). Default: 90 days before `end_date`.
    start_date: Option<String>,
    /// Requests filed at or before this W3C date-time (a date alone: its end). Default: now.
    /// The range may not span more than 90 days.
    end_date: Option<String>,
    /// Comma-separated: `open`, `closed`.
    status: Option<String>,
    /// `zh` (the default) or `en`: the language of names and notices. Without it the
    /// `Accept-Language` header decides.
    locale: Option<String>,
    /// Taken and ignored: this endpoint serves one jurisdiction, the county.
    #[serde(rename = "jurisdiction_id")]
    _jurisdiction_id: Option<String>,
    /// Taken and ignored on reads, which are public.
    #[serde(rename = "api_key")]
    _api_key: Option<String>,
}

/// `{code}.json` / `{code}.xml` in the path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServicePath {
    /// The service code (or another of its category's codes, or its id) followed by `.json` or
    /// `.xml` (the answer's format): `09009.json`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]{1,64}\.(json|xml)$"))]
    file: String,
}

/// `{id}.json` / `{id}.xml` in the path.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RequestPath {
    /// The request id (the case id, a ULID) followed by `.json` or `.xml` (the answer's
    /// format).
    #[schemars(regex(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}\.(json|xml)$"))]
    file: String,
}

/// The path's code or id and the format its extension asks for (JSON when it names none).
fn file_of(file: Result<String, PathRejection>) -> Result<(String, Fmt), Refusal> {
    let file = file.map_err(|e| Refusal::bad(Fmt::Json, format!("path: {}", e.body_text())))?;
    match Fmt::split(&file) {
        Some((stem, fmt)) => Ok((stem.to_string(), fmt)),
        None => Err(Refusal::not_found(
            Fmt::Json,
            format!("`{}` names no format: end it in .json or .xml", clip(&file)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// From the governance configuration and the case to Open311
// ---------------------------------------------------------------------------------------------

/// A category's service code: its 2026 code, else its legacy code, else its id.
fn service_code(c: &Category) -> &str {
    [&c.code_2026, &c.code_legacy, &c.id]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or(c.id.as_str(), |s| s.as_str())
}

fn name(c: &Category, l: Lang) -> &str {
    match l {
        Lang::Zh => &c.name,
        Lang::En => &c.name_en,
    }
}

/// The part of a bilingual `中文 / English` text in `l`.
fn part(text: &str, l: Lang) -> &str {
    match (text.split_once(" / "), l) {
        (Some((zh, _)), Lang::Zh) => zh.trim(),
        (Some((_, en)), Lang::En) => en.trim(),
        (None, _) => text,
    }
}

fn limit_text(limit: Limit, l: Lang) -> String {
    let v = limit.value;
    match l {
        Lang::Zh => {
            let unit = match limit.unit {
                Unit::WorkingMinutes => "个工作分钟",
                Unit::WorkingHours => "个工作小时",
                Unit::WorkingDays => "个工作日",
                Unit::NaturalMinutes => "分钟",
                Unit::NaturalHours => "小时",
                Unit::NaturalDays => "天",
            };
            format!("{v} {unit}")
        }
        Lang::En => {
            let unit = match limit.unit {
                Unit::WorkingMinutes => "working minute",
                Unit::WorkingHours => "working hour",
                Unit::WorkingDays => "working day",
                Unit::NaturalMinutes => "minute",
                Unit::NaturalHours => "hour",
                Unit::NaturalDays => "day",
            };
            format!("{v} {unit}{}", if v == 1 { "" } else { "s" })
        }
    }
}

fn service_of(c: &Category, l: Lang) -> Service {
    let mut codes = Vec::new();
    if !c.code_2026.is_empty() {
        codes.push(format!("GB/T 47678.5-2026 {}", c.code_2026));
    }
    if !c.code_legacy.is_empty() {
        codes.push(format!("GB/T 30428.2 {}", c.code_legacy));
    }
    let codes = codes.join(", ");
    let limit = limit_text(c.limit, l);
    let register = part(&c.register_when, l);
    let description = match l {
        Lang::Zh => format!(
            "{}（{codes}）。派遣后 {limit}内处置。立案条件：{register}",
            c.name
        ),
        Lang::En => format!(
            "{} ({codes}). Handled within {limit} of dispatch. Registered when: {register}",
            c.name_en
        ),
    };
    let keywords: Vec<&str> = [&c.id, &c.code_2026, &c.code_legacy, &c.name, &c.name_en]
        .into_iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let group = match (c.kind, l) {
        (Kind::Event, Lang::Zh) => "事件",
        (Kind::Component, Lang::Zh) => "部件",
        (Kind::Event, Lang::En) => "event",
        (Kind::Component, Lang::En) => "component",
    };
    Service {
        service_code: service_code(c).to_string(),
        service_name: name(c, l).to_string(),
        description,
        metadata: false,
        kind: ServiceType::Realtime,
        keywords: keywords.join(","),
        group: group.to_string(),
    }
}

fn service_notice(c: &Category, l: Lang) -> String {
    let limit = limit_text(c.limit, l);
    match l {
        Lang::Zh => format!(
            "{}：受理立案后派遣至责任部门，派遣后 {limit}内处置。",
            c.name
        ),
        Lang::En => format!(
            "{}: once registered, dispatched to the responsible department and handled within \
             {limit} of dispatch.",
            c.name_en
        ),
    }
}

/// `ms` as ISO 8601 in the governance calendar's offset: `2026-09-21T09:00:00+08:00`.
fn datetime(ms: i64, g: &Governance) -> String {
    let offset = g.calendar.offset();
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        h.unsigned_abs(),
        m.unsigned_abs()
    )
}

/// W3C date-time (RFC 3339), or a date alone: its midnight (`end_of_day`: the last ms of it)
/// in the county's offset.
fn parse_date(name: &str, s: &str, end_of_day: bool, g: &Governance) -> Result<i64, String> {
    let bad = || {
        format!(
            "{name} `{}` is not a W3C date-time like 2026-09-21T08:30:00+08:00 (or a date, \
             2026-09-21)",
            clip(s)
        )
    };
    if s.len() == 10 {
        let d = crate::cases::calendar::parse_date(s).ok_or_else(bad)?;
        let midnight = d.midnight().assume_offset(g.calendar.offset());
        let ms = (midnight.unix_timestamp_nanos() / 1_000_000) as i64;
        return Ok(if end_of_day { ms + DAY_MS - 1 } else { ms });
    }
    // Unix milliseconds are the REST API's; Open311 speaks W3C date-times only.
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    parse_time_ms(s).map_err(|_| bad())
}

/// Actions whose notes are for the citizen; 督办, extensions, timers, merges and AI re-checks
/// (machine notes) stay internal.
fn public_note(a: &Action) -> bool {
    !matches!(
        a,
        Action::Supervise
            | Action::RecheckRequested { .. }
            | Action::RecheckDone { .. }
            | Action::RecheckUnanswered { .. }
            | Action::NotifyFailed { .. }
            | Action::RequestExtension { .. }
            | Action::ApproveExtension
            | Action::DenyExtension
            | Action::SlaWarning
            | Action::SlaOverdue
            | Action::SlaReminder { .. }
            | Action::Merge { .. }
    )
}

fn reject_reason(r: RejectReason, l: Lang) -> &'static str {
    match (r, l) {
        (RejectReason::FalsePositive, Lang::Zh) => "不予立案：经核实问题不存在",
        (RejectReason::Duplicate, Lang::Zh) => "不予立案：重复上报",
        (RejectReason::OutOfScope, Lang::Zh) => "不予立案：不属于受理范围",
        (RejectReason::FalsePositive, Lang::En) => "Not registered: no such problem was found",
        (RejectReason::Duplicate, Lang::En) => "Not registered: a duplicate of another report",
        (RejectReason::OutOfScope, Lang::En) => "Not registered: outside what the county handles",
    }
}

/// The latest note a person wrote for the citizen; a rejection says its reason first.
fn status_notes(case: &Case, l: Lang) -> Option<String> {
    let note = case
        .timeline
        .iter()
        .rev()
        .find(|e| {
            // A person: not the hub (`system`) nor an edge agent (`agent:…`).
            let person = e.actor.id != "system" && !e.actor.id.starts_with("agent:");
            person && public_note(&e.action) && !e.note.trim().is_empty()
        })
        .map(|e| e.note.trim().to_string());
    let reason = match case.state {
        CaseState::Rejected => case.timeline.iter().rev().find_map(|e| match e.action {
            Action::Reject { reason } => Some(reject_reason(reason, l)),
            _ => None,
        }),
        _ => None,
    };
    match (reason, note) {
        (Some(r), Some(n)) => Some(format!("{r}. {n}")),
        (Some(r), None) => Some(r.to_string()),
        (None, n) => n,
    }
}

fn request_of(case: &Case, g: &Governance, l: Lang) -> ServiceRequest {
    let cat = g.category(&case.category);
    let cal = &g.calendar;
    let citizen = case.citizen.as_ref();
    // The last change a citizen would call one: timers and merges are the hub's bookkeeping.
    let updated = case
        .timeline
        .iter()
        .rev()
        .find(|e| {
            !matches!(
                e.action,
                Action::SlaWarning
                    | Action::SlaOverdue
                    | Action::SlaReminder { .. }
                    | Action::Merge { .. }
            )
        })
        .map_or(case.created_ms, |e| e.at_ms);
    let expected = case
        .clock
        .as_ref()
        .filter(|_| case.state.is_open())
        .and_then(|c| c.deadline(cal));
    let agency = case.department.as_deref().map(|d| match g.department(d) {
        Some(dep) if l == Lang::En => dep.name_en.clone(),
        Some(dep) => dep.name.clone(),
        None => d.to_string(),
    });
    ServiceRequest {
        service_request_id: case.id.clone(),
        status: if case.state.is_open() {
            Status::Open
        } else {
            Status::Closed
        },
        status_notes: status_notes(case, l),
        service_name: cat.map_or(case.category.clone(), |c| name(c, l).to_string()),
        service_code: cat.map_or(case.category.clone(), |c| service_code(c).to_string()),
        description: citizen
            .map(|c| c.description.clone())
            .filter(|d| !d.is_empty()),
        agency_responsible: agency,
        service_notice: cat.map(|c| service_notice(c, l)),
        requested_datetime: datetime(case.created_ms, g),
        updated_datetime: datetime(updated, g),
        expected_datetime: expected.map(|ms| datetime(ms, g)),
        address: citizen.and_then(|c| c.address.clone()),
        lat: case.place.point.map(|p| p[1]),
        long: case.place.point.map(|p| p[0]),
        media_url: citizen.and_then(|c| c.media_url.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

fn engine_of<S>(st: &ApiState<S>, fmt: Fmt) -> Result<crate::http::state::Cases, Refusal> {
    st.cases.clone().ok_or_else(|| {
        Refusal::new(
            fmt,
            StatusCode::SERVICE_UNAVAILABLE,
            "the case workflow is not running on this hub",
        )
    })
}

/// Runs a store-bound step in the case API's slots and time limit; its own refusals and the
/// slot's (503) come back in the call's format.
async fn in_store<T: Send + 'static>(
    st_slots: &tokio::sync::Semaphore,
    fmt: Fmt,
    what: &str,
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    blocking(st_slots, what, move || Ok(f()))
        .await
        .map_err(|e| Refusal::new(fmt, e.status(), e.message()))?
}

fn store_failed(fmt: Fmt, e: EngineError) -> Refusal {
    tracing::error!(error = %e, "Open311: the case store failed");
    Refusal::new(
        fmt,
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("case store: {e}"),
    )
}

/// `GET services.{json,xml}`.
pub(crate) async fn services<S: Store, F: Format>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    Query311(p): Query311<LocaleParams>,
) -> Result<Reply, Refusal> {
    services_in(&st, &headers, p, F::FMT).inspect_err(|e| log_refusal("GET services", e))
}

fn services_in<S>(
    st: &ApiState<S>,
    headers: &HeaderMap,
    p: Result<LocaleParams, QueryFault>,
    fmt: Fmt,
) -> Result<Reply, Refusal> {
    let p = p.map_err(|f| Refusal::query(fmt, f))?;
    let l = lang(p.locale.as_deref(), headers).map_err(|m| Refusal::bad(fmt, m))?;
    let engine = engine_of(st, fmt)?;
    let list: Vec<Service> = engine
        .governance()
        .categories
        .iter()
        .map(|c| service_of(c, l))
        .collect();
    Ok(Reply::list(StatusCode::OK, fmt, "services", &list))
}

/// `GET services/{code}.{json,xml}`.
pub(crate) async fn service<S: Store>(
    State(st): State<ApiState<S>>,
    path: Result<Path<ServicePath>, PathRejection>,
    Query311(p): Query311<LocaleParams>,
) -> Result<Reply, Refusal> {
    service_in(&st, path.map(|Path(p)| p.file), p)
        .inspect_err(|e| log_refusal("GET services/{code}", e))
}

fn service_in<S>(
    st: &ApiState<S>,
    path: Result<String, PathRejection>,
    p: Result<LocaleParams, QueryFault>,
) -> Result<Reply, Refusal> {
    let (code, fmt) = file_of(path)?;
    p.map_err(|f| Refusal::query(fmt, f))?;
    let engine = engine_of(st, fmt)?;
    let cat = engine.governance().category(&code).ok_or_else(|| {
        Refusal::not_found(
            fmt,
            format!("service_code `{}` is not a service", clip(&code)),
        )
    })?;
    let def = ServiceDefinition {
        service_code: service_code(cat).to_string(),
        attributes: Vec::new(),
    };
    Ok(Reply::one(StatusCode::OK, fmt, &def))
}

/// What a `POST requests` sent, field by field, before it is checked.
#[derive(Debug, Default)]
struct Sent {
    api_key: Option<String>,
    service_code: Option<String>,
    lat: Option<String>,
    long: Option<String>,
    address_string: Option<String>,
    description: Option<String>,
    media_url: Option<String>,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
    device_id: Option<String>,
    account_id: Option<String>,
    attributes: Vec<Attribute>,
    /// Every field but `api_key`, sorted: what a retried request repeats.
    fingerprinted: Vec<(String, String)>,
}

/// The fields of a `POST requests`, in the spec's order.
const FIELDS: &[&str] = &[
    "api_key",
    "jurisdiction_id",
    "service_code",
    "lat",
    "long",
    "address_string",
    "address_id",
    "email",
    "device_id",
    "account_id",
    "first_name",
    "last_name",
    "phone",
    "description",
    "media_url",
    "attribute[…]",
];

/// `attribute[CODE]` or `attribute[CODE][]` → CODE.
fn attribute_code(key: &str) -> Option<&str> {
    let inner = key.strip_prefix("attribute[")?;
    let inner = inner
        .strip_suffix("][]")
        .or_else(|| inner.strip_suffix(']'))?;
    let ok = !inner.is_empty()
        && inner.len() <= 64
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    ok.then_some(inner)
}

const MAX_ATTRIBUTES: usize = 32;

/// Sorts the body's pairs into [`Sent`]; every problem is listed.
fn sent(pairs: Vec<(String, String)>, problems: &mut Vec<String>) -> Sent {
    let mut s = Sent::default();
    for (k, v) in pairs {
        if k != "api_key" {
            s.fingerprinted.push((k.clone(), v.clone()));
        }
        if let Some(code) = attribute_code(&k) {
            if s.attributes.len() == MAX_ATTRIBUTES {
                problems.push(format!("at most {MAX_ATTRIBUTES} attribute values"));
                continue;
            }
            s.attributes.push(Attribute {
                code: code.to_string(),
                value: v,
            });
            continue;
        }
        let slot = match k.as_str() {
            "api_key" => &mut s.api_key,
            "service_code" => &mut s.service_code,
            "lat" => &mut s.lat,
            "long" => &mut s.long,
            "address_string" => &mut s.address_string,
            "description" => &mut s.description,
            "media_url" => &mut s.media_url,
            "email" => &mut s.email,
            "first_name" => &mut s.first_name,
            "last_name" => &mut s.last_name,
            "phone" => &mut s.phone,
            "device_id" => &mut s.device_id,
            "account_id" => &mut s.account_id,
            // One jurisdiction; address ids are not kept (a location is lat/long or a string).
            "jurisdiction_id" | "address_id" => continue,
            other => {
                let hint = match other {
                    "lon" | "lng" | "longitude" => " (Open311 calls it `long`)",
                    "latitude" => " (Open311 calls it `lat`)",
                    _ if other.starts_with("attribute") => {
                        " (attributes are `attribute[CODE]`, CODE 1–64 of A-Z a-z 0-9 _ . -)"
                    }
                    _ => "",
                };
                problems.push(format!(
                    "unknown field `{}`{hint} (fields: {})",
                    clip(other),
                    FIELDS.join(", ")
                ));
                continue;
            }
        };
        if slot.is_some() {
            problems.push(format!("field `{k}` given more than once"));
        }
        *slot = Some(v);
    }
    s.fingerprinted.sort();
    s
}

/// A JSON body's fields as form pairs: strings, numbers and booleans as text, `null` as
/// absent; `attribute` may be an object of codes to values (a list for several values).
fn json_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("body is not JSON: {e}"))?;
    let serde_json::Value::Object(map) = v else {
        return Err("body must be a JSON object of the request's fields".into());
    };
    fn scalar(v: serde_json::Value) -> Result<Option<String>, ()> {
        match v {
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            serde_json::Value::Null => Ok(None),
            _ => Err(()),
        }
    }
    let mut out = Vec::new();
    for (k, v) in map {
        if k == "attribute" {
            let serde_json::Value::Object(attrs) = v else {
                return Err("field `attribute` must be an object of codes to values".into());
            };
            for (code, v) in attrs {
                let values = match v {
                    serde_json::Value::Array(a) => a,
                    v => vec![v],
                };
                for v in values {
                    let text = scalar(v).map_err(|()| {
                        format!(
                            "field `attribute.{}` must hold text or numbers",
                            clip(&code)
                        )
                    })?;
                    if let Some(t) = text {
                        out.push((format!("attribute[{code}]"), t));
                    }
                }
            }
            continue;
        }
        match scalar(v) {
            Ok(Some(t)) => out.push((k, t)),
            Ok(None) => {}
            Err(()) => return Err(format!("field `{}` must be a string or a number", clip(&k))),
        }
    }
    Ok(out)
}

/// `Some(text)` if `v` is 1..=`max` characters without control characters (line breaks and
/// tabs allowed where `lines`); the problem is listed otherwise. Empty counts as absent.
fn text(
    field: &str,
    v: Option<String>,
    max: usize,
    lines: bool,
    problems: &mut Vec<String>,
) -> Option<String> {
    let v = v?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if v.chars().count() > max {
        problems.push(format!("{field} is longer than {max} characters"));
        return None;
    }
    let bad = |c: char| c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t'));
    if v.chars().any(bad) {
        problems.push(format!("{field} contains a control character"));
        return None;
    }
    Some(v.to_string())
}

/// A coordinate within `-range..=range`.
fn coordinate(field: &str, v: &str, range: f64, problems: &mut Vec<String>) -> Option<f64> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && (-range..=range).contains(&x) => Some(x),
        Ok(_) => {
            problems.push(format!(
                "{field} must be -{range}..{range}, not {}",
                clip(v)
            ));
            None
        }
        Err(_) => {
            problems.push(format!("{field} `{}` is not a number", clip(v)));
            None
        }
    }
}

/// An `http(s)://` URL with a host, no spaces or control characters.
fn media_url(v: &str) -> bool {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && !v.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// The checked request: the case to open and what the citizen sent with it.
struct Report {
    new: NewCase,
    citizen: CitizenReport,
    category: Category,
}

fn fingerprint(client: &str, device: &str, fields: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for part in [client, device] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (k, v) in fields {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks every field of a request (each problem listed) and places it in the county.
fn check_report<S>(
    st: &ApiState<S>,
    g: &Governance,
    s: Sent,
    client: &str,
    problems: &mut Vec<String>,
) -> Option<Report> {
    let category = match s.service_code.as_deref().map(str::trim) {
        None | Some("") => {
            problems.push("service_code is required (GET services.json lists them)".into());
            None
        }
        Some(code) => g.category(code).cloned().or_else(|| {
            problems.push(format!(
                "service_code `{}` is not a service (GET services.json lists them)",
                clip(code)
            ));
            None
        }),
    };
    let lat = s
        .lat
        .as_deref()
        .and_then(|v| coordinate("lat", v, 90.0, problems));
    let long = s
        .long
        .as_deref()
        .and_then(|v| coordinate("long", v, 180.0, problems));
    let address = text("address_string", s.address_string, 512, false, problems);
    let mut place = Place::default();
    match (&s.lat, &s.long) {
        (Some(_), None) => problems.push("lat and long go together: long is missing".into()),
        (None, Some(_)) => problems.push("lat and long go together: lat is missing".into()),
        (None, None) if address.is_none() => {
            problems.push("a location is required: lat and long, or address_string".into())
        }
        _ => {}
    }
    if let (Some(lat), Some(long)) = (lat, long) {
        place.point = Some([long, lat]);
        if let Some(county) = &st.county {
            match citizen::locate(county, [long, lat]) {
                Some(spot) => {
                    place.town = spot.town;
                    place.zone = spot.zone;
                    place.rural = spot.rural;
                }
                None => problems.push(format!(
                    "lat/long {lat}, {long} is outside the county's towns: no department \
                     serves it"
                )),
            }
        }
    }
    let description = text("description", s.description, 4000, true, problems);
    let media = text("media_url", s.media_url, 2048, false, problems);
    if media.as_deref().is_some_and(|m| !media_url(m)) {
        problems.push("media_url must be an http:// or https:// URL".into());
    }
    let email = text("email", s.email, 254, false, problems);
    if email
        .as_deref()
        .is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace))
    {
        problems.push("email is not an e-mail address".into());
    }
    let contact = Contact {
        email,
        first_name: text("first_name", s.first_name, 64, false, problems),
        last_name: text("last_name", s.last_name, 64, false, problems),
        phone: text("phone", s.phone, 32, false, problems),
    };
    let device_id = text("device_id", s.device_id, 128, false, problems);
    let account_id = text("account_id", s.account_id, 128, false, problems);
    for a in &s.attributes {
        text(
            &format!("attribute[{}]", a.code),
            Some(a.value.clone()),
            1024,
            true,
            problems,
        );
    }
    let category = category?;
    if !problems.is_empty() {
        return None;
    }
    let fingerprint = device_id
        .as_deref()
        .map(|d| fingerprint(client, d, &s.fingerprinted));
    let mut evidence = Vec::new();
    evidence.extend(media.clone());
    Some(Report {
        new: NewCase {
            id: String::new(),
            source: Source::Citizen,
            category: category.id.clone(),
            place,
            evidence,
            camera: None,
        },
        citizen: CitizenReport {
            description: description.unwrap_or_default(),
            media_url: media,
            address,
            contact,
            device_id,
            account_id,
            attributes: s.attributes,
            client: client.to_string(),
            fingerprint,
        },
        category,
    })
}

/// The roles that may file a report (those [`Action::Report`] allows).
fn may_report(r: Role) -> bool {
    matches!(
        r,
        Role::Inspector | Role::Operator | Role::Supervisor | Role::Admin
    )
}

fn case_role(r: Role) -> CaseRole {
    match r {
        Role::Viewer => CaseRole::Viewer,
        Role::Inspector => CaseRole::Inspector,
        Role::Handler => CaseRole::Handler,
        Role::Operator => CaseRole::Operator,
        Role::Supervisor => CaseRole::Supervisor,
        Role::Admin => CaseRole::Admin,
    }
}

/// Who files: the `api_key`'s token (with `[auth] http = "required"`), else `anonymous`.
fn reporter<S>(st: &ApiState<S>, fmt: Fmt, key: Option<&str>) -> Result<Actor, Refusal> {
    let Some(access) = &st.access else {
        return Ok(Actor {
            id: "anonymous".into(),
            role: CaseRole::Admin,
            department: None,
        });
    };
    let refuse = |reason: HttpAuthRefusal, who: &str, msg: String| {
        st.metrics.refuse_http(reason);
        access.log_refusal(
            &axum::http::Method::POST,
            "/open311/v2/requests",
            reason,
            who,
        );
        Refusal::new(fmt, StatusCode::FORBIDDEN, msg)
    };
    let key = key.map(str::trim).filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(refuse(
            HttpAuthRefusal::MissingToken,
            "",
            "api_key is required to file a request (a key from the county: an API token of \
             role inspector or higher)"
                .into(),
        ));
    };
    let Some(who) = access.authenticate(key) else {
        return Err(refuse(
            HttpAuthRefusal::UnknownToken,
            "",
            "api_key is not a valid key of this hub (never issued, or revoked)".into(),
        ));
    };
    if !may_report(who.role) {
        return Err(refuse(
            HttpAuthRefusal::InsufficientRole,
            &who.name,
            format!(
                "api_key `{}` has role `{}`, which may not file requests (inspector, operator, \
                 supervisor or admin may)",
                who.name, who.role
            ),
        ));
    }
    Ok(Actor {
        id: who.name,
        role: case_role(who.role),
        department: who.department,
    })
}

/// The body of a `POST` as pairs: form-urlencoded or a JSON object.
async fn body_pairs(req: Request, fmt: Fmt) -> Result<Vec<(String, String)>, Refusal> {
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let json = match kind.as_str() {
        "application/x-www-form-urlencoded" => false,
        "application/json" => true,
        _ => {
            return Err(Refusal::new(
                fmt,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/x-www-form-urlencoded (or application/json)",
            ))
        }
    };
    let too_big = || {
        Refusal::new(
            fmt,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} KiB", MAX_BODY / 1024),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    // Bounded whatever the headers say (a chunked body has no length).
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| too_big())?;
    if json {
        json_pairs(&bytes).map_err(|m| Refusal::bad(fmt, m))
    } else {
        serde_html_form::from_bytes::<Vec<(String, String)>>(&bytes)
            .map_err(|e| Refusal::bad(fmt, format!("body is not form-urlencoded: {e}")))
    }
}

/// The case an earlier copy of this request opened, if one in the last day did.
fn earlier_copy(
    engine: &Engine<SledCases>,
    fingerprint: &str,
    now: i64,
) -> Result<Option<Case>, EngineError> {
    let since = now - RETRY_WINDOW_MS;
    let (mut after, mut scanned) = (None::<String>, 0);
    loop {
        let citizens = CaseFilter {
            source: Some(Source::Citizen),
            ..CaseFilter::default()
        };
        let page = engine.list(&citizens, after.as_deref(), PAGE)?;
        for c in &page {
            if c.created_ms < since || scanned >= RETRY_SCAN {
                return Ok(None);
            }
            scanned += 1;
            let same = c
                .citizen
                .as_ref()
                .and_then(|r| r.fingerprint.as_deref())
                .is_some_and(|f| f == fingerprint);
            if same && c.source == Source::Citizen {
                return Ok(Some(c.clone()));
            }
        }
        if page.len() < PAGE {
            return Ok(None);
        }
        after = page.last().map(|c| c.id.clone());
    }
}

/// `POST requests.{json,xml}`.
pub(crate) async fn create<S: Store, F: Format>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Reply, Refusal> {
    let fmt = F::FMT;
    let r = create_in(st, headers, req, fmt).await;
    r.inspect_err(|e| log_refusal("POST requests", e))
}

async fn create_in<S: Store>(
    st: ApiState<S>,
    headers: HeaderMap,
    req: Request,
    fmt: Fmt,
) -> Result<Reply, Refusal> {
    let l = lang(None, &headers).map_err(|m| Refusal::bad(fmt, m))?;
    let engine = engine_of(&st, fmt)?;
    let pairs = body_pairs(req, fmt).await?;
    let mut problems = Vec::new();
    let s = sent(pairs, &mut problems);
    // Who asks comes first: a client without a valid key learns nothing of the fields.
    let actor = reporter(&st, fmt, s.api_key.as_deref())?;
    let report = check_report(&st, engine.governance(), s, &actor.id, &mut problems);
    let Some(Report {
        new,
        citizen,
        category,
    }) = report.filter(|_| problems.is_empty())
    else {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            fmt,
            descriptions: problems,
        });
    };
    let (status, case) = in_store(&st.store_slots, fmt, "Open311 request", move || {
        let _one = REPORTING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = citizen.fingerprint.as_deref() {
            let earlier =
                earlier_copy(&engine, f, engine.now_ms()).map_err(|e| store_failed(fmt, e))?;
            if let Some(c) = earlier {
                return Ok((StatusCode::OK, c));
            }
        }
        let case = engine
            .report_citizen(new, citizen, &actor)
            .map_err(|e| store_failed(fmt, e))?;
        tracing::info!(case = case.id, category = case.category, town = ?case.place.town,
            client = actor.id, "Open311 request opened a case");
        Ok((StatusCode::CREATED, case))
    })
    .await?;
    let created = RequestCreated {
        service_request_id: case.id,
        service_notice: Some(service_notice(&category, l)),
        account_id: None,
    };
    Ok(Reply::list(status, fmt, "service_requests", &[created]))
}

/// The filters of `GET requests`, checked.
struct Filters {
    ids: Option<Vec<String>>,
    categories: Option<Vec<String>>,
    statuses: Option<Vec<Status>>,
    start: i64,
    end: i64,
    lang: Lang,
}

fn comma_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn filters(
    p: RequestsParams,
    headers: &HeaderMap,
    g: &Governance,
    now: i64,
    fmt: Fmt,
) -> Result<Filters, Refusal> {
    let bad = |m: String| Refusal::bad(fmt, m);
    let lang = lang(p.locale.as_deref(), headers).map_err(bad)?;
    let ids = match p.service_request_id.as_deref() {
        None => None,
        Some(v) => {
            let mut ids: Vec<String> = Vec::new();
            for id in comma_list(v) {
                if ulid::Ulid::from_string(id).is_err() {
                    return Err(bad(format!(
                        "service_request_id `{}` is not a request id (26 characters)",
                        clip(id)
                    )));
                }
                if !ids.iter().any(|x| x == id) {
                    ids.push(id.to_string());
                }
            }
            if ids.len() > MAX_IDS {
                return Err(bad(format!(
                    "service_request_id lists more than {MAX_IDS} ids"
                )));
            }
            Some(ids)
        }
    };
    let categories = match p.service_code.as_deref() {
        None => None,
        Some(v) => Some(
            comma_list(v)
                .map(|code| {
                    g.category(code).map(|c| c.id.clone()).ok_or_else(|| {
                        bad(format!("service_code `{}` is not a service", clip(code)))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let statuses = match p.status.as_deref() {
        None => None,
        Some(v) => Some(
            comma_list(v)
                .map(|s| match s {
                    "open" => Ok(Status::Open),
                    "closed" => Ok(Status::Closed),
                    other => Err(bad(format!(
                        "status `{}` is not open or closed",
                        clip(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let end = match p.end_date.as_deref() {
        Some(s) => parse_date("end_date", s, true, g).map_err(bad)?,
        None => now,
    };
    let start = match p.start_date.as_deref() {
        Some(s) => parse_date("start_date", s, false, g).map_err(bad)?,
        None => end.saturating_sub(WINDOW_MS),
    };
    if ids.is_none() {
        if start > end {
            return Err(bad("start_date is after end_date".into()));
        }
        if end - start > WINDOW_MS {
            return Err(bad(
                "start_date..end_date spans more than 90 days: ask for 90 days at a time".into(),
            ));
        }
    }
    Ok(Filters {
        ids,
        categories,
        statuses,
        start,
        end,
        lang,
    })
}

fn status_of(c: &Case) -> Status {
    if c.state.is_open() {
        Status::Open
    } else {
        Status::Closed
    }
}

/// The citizen cases the filters select, newest first (or in the order of the ids asked for).
fn select(engine: &Engine<SledCases>, f: &Filters) -> Result<Vec<Case>, EngineError> {
    let citizen = |c: &Case| c.source == Source::Citizen;
    if let Some(ids) = &f.ids {
        let mut out = Vec::new();
        for id in ids {
            out.extend(engine.get(id)?.filter(citizen));
        }
        return Ok(out);
    }
    let wanted = |c: &Case| {
        citizen(c)
            && f.categories
                .as_ref()
                .is_none_or(|k| k.contains(&c.category))
            && f.statuses
                .as_ref()
                .is_none_or(|s| s.contains(&status_of(c)))
    };
    // Case ids are ULIDs of their creation time: the listing starts just after `end`.
    let bound = ulid::Ulid::from_parts(u64::try_from(f.end.saturating_add(1)).unwrap_or(0), 0);
    let mut after = Some(bound.to_string());
    // Only citizens' cases are read (the summaries filter on the source).
    let filter = CaseFilter {
        category: f
            .categories
            .as_ref()
            .filter(|k| k.len() == 1)
            .and_then(|k| k.first().cloned()),
        source: Some(Source::Citizen),
        ..CaseFilter::default()
    };
    let (mut out, mut scanned) = (Vec::new(), 0);
    loop {
        let page = engine.list(&filter, after.as_deref(), PAGE)?;
        for c in &page {
            if c.created_ms < f.start {
                return Ok(out);
            }
            if wanted(c) {
                out.push(c.clone());
                if out.len() == MAX_RESULTS {
                    return Ok(out);
                }
            }
        }
        scanned += page.len();
        if page.len() < PAGE {
            return Ok(out);
        }
        if scanned >= MAX_SCANNED {
            tracing::warn!(
                scanned,
                found = out.len(),
                "Open311 GET requests: stopped reading cases at the scan bound; narrow the dates"
            );
            return Ok(out);
        }
        after = page.last().map(|c| c.id.clone());
    }
}

/// `GET requests.{json,xml}`.
pub(crate) async fn list<S: Store, F: Format>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    Query311(p): Query311<RequestsParams>,
) -> Result<Reply, Refusal> {
    let fmt = F::FMT;
    let r = list_in(st, headers, p, fmt).await;
    r.inspect_err(|e| log_refusal("GET requests", e))
}

async fn list_in<S: Store>(
    st: ApiState<S>,
    headers: HeaderMap,
    p: Result<RequestsParams, QueryFault>,
    fmt: Fmt,
) -> Result<Reply, Refusal> {
    let p = p.map_err(|f| Refusal::query(fmt, f))?;
    let engine = engine_of(&st, fmt)?;
    let f = filters(p, &headers, engine.governance(), engine.now_ms(), fmt)?;
    in_store(&st.store_slots, fmt, "Open311 requests", move || {
        let cases = select(&engine, &f).map_err(|e| store_failed(fmt, e))?;
        let g = engine.governance();
        let list: Vec<ServiceRequest> = cases.iter().map(|c| request_of(c, g, f.lang)).collect();
        Ok(Reply::list(StatusCode::OK, fmt, "service_requests", &list))
    })
    .await
}

/// `GET requests/{id}.{json,xml}`.
pub(crate) async fn get<S: Store>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    path: Result<Path<RequestPath>, PathRejection>,
    Query311(p): Query311<LocaleParams>,
) -> Result<Reply, Refusal> {
    let r = get_in(st, headers, path.map(|Path(p)| p.file), p).await;
    r.inspect_err(|e| log_refusal("GET requests/{id}", e))
}

async fn get_in<S: Store>(
    st: ApiState<S>,
    headers: HeaderMap,
    path: Result<String, PathRejection>,
    p: Result<LocaleParams, QueryFault>,
) -> Result<Reply, Refusal> {
    let (id, fmt) = file_of(path)?;
    let p = p.map_err(|f| Refusal::query(fmt, f))?;
    let l = lang(p.locale.as_deref(), &headers).map_err(|m| Refusal::bad(fmt, m))?;
    let engine = engine_of(&st, fmt)?;
    let missing = Refusal::not_found(fmt, format!("no request `{}`", clip(&id)));
    if ulid::Ulid::from_string(&id).is_err() {
        return Err(missing);
    }
    in_store(&st.store_slots, fmt, "Open311 request", move || {
        let case = engine
            .get(&id)
            .map_err(|e| store_failed(fmt, e))?
            // Camera and sensor cases are not published: as if absent.
            .filter(|c| c.source == Source::Citizen)
            .ok_or(missing)?;
        let one = [request_of(&case, engine.governance(), l)];
        Ok(Reply::list(StatusCode::OK, fmt, "service_requests", &one))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Routes and their documentation
// ---------------------------------------------------------------------------------------------

/// Every Open311 route (public: see the module docs for the access policy).
pub fn routes<S: Store>() -> ApiRouter<ApiState<S>> {
    ApiRouter::new()
        .api_route(
            "/open311/v2/services.json",
            get_with(services::<S, AsJson>, |op| {
                services_docs(op, Fmt::Json, "open311ServicesJson")
            }),
        )
        .api_route(
            "/open311/v2/services.xml",
            get_with(services::<S, AsXml>, |op| {
                services_docs(op, Fmt::Xml, "open311ServicesXml")
            }),
        )
        .api_route(
            "/open311/v2/services/{file}",
            get_with(service::<S>, service_docs),
        )
        .api_route(
            "/open311/v2/requests.json",
            get_with(list::<S, AsJson>, |op| {
                list_docs(op, Fmt::Json, "open311RequestsJson")
            })
            .merge(post_with(create::<S, AsJson>, |op| {
                create_docs(op, Fmt::Json, "open311CreateRequestJson")
            })),
        )
        .api_route(
            "/open311/v2/requests.xml",
            get_with(list::<S, AsXml>, |op| {
                list_docs(op, Fmt::Xml, "open311RequestsXml")
            })
            .merge(post_with(create::<S, AsXml>, |op| {
                create_docs(op, Fmt::Xml, "open311CreateRequestXml")
            })),
        )
        .api_route("/open311/v2/requests/{file}", get_with(get::<S>, get_docs))
        // Any other path under /open311/v2/ answers in the spec's format too (undocumented).
        .route("/open311/v2/{*rest}", axum::routing::any(unknown))
}

/// A path under `/open311/v2/` that is no endpoint: 404 as the spec's error list.
async fn unknown(uri: axum::http::Uri) -> Refusal {
    let fmt = if uri.path().ends_with(".xml") {
        Fmt::Xml
    } else {
        Fmt::Json
    };
    Refusal::not_found(
        fmt,
        format!(
            "no Open311 endpoint `{}`: services.json, services/{{code}}.json, requests.json, \
             requests/{{id}}.json (or .xml)",
            clip(uri.path())
        ),
    )
}

/// The XML answers' schema: a document, as text.
fn xml_schema(root: &str) -> Schema {
    json_schema!({
        "type": "string",
        "description": format!("An XML document whose root element is `<{root}>` (GeoReport v2)"),
    })
}

/// A `status` answer in `fmt` (`None`: either, by the path's extension).
fn answer<'a>(
    op: TransformOperation<'a>,
    status: u16,
    fmt: Option<Fmt>,
    description: &str,
    json: Schema,
    xml_root: &str,
) -> TransformOperation<'a> {
    let mut r = content(description, "application/json", json);
    let xml = content(description, "application/xml", xml_schema(xml_root));
    match fmt {
        Some(Fmt::Json) => {}
        Some(Fmt::Xml) => r.content = xml.content,
        None => r.content.extend(xml.content),
    }
    respond(op, status, r)
}

/// The spec's error list with these statuses, in `fmt` (or either).
fn error_docs<'a>(
    mut op: TransformOperation<'a>,
    fmt: Option<Fmt>,
    list: &[(u16, &str)],
) -> TransformOperation<'a> {
    for (status, description) in list {
        op = answer(
            op,
            *status,
            fmt,
            description,
            schema_of::<Vec<Open311Error>>(),
            "errors",
        );
    }
    op
}

fn services_docs<'a>(op: TransformOperation<'a>, fmt: Fmt, id: &'a str) -> TransformOperation<'a> {
    let op = op
        .id(id)
        .tag("open311")
        .summary(match fmt {
            Fmt::Json => "Open311: the services (governance categories), JSON",
            Fmt::Xml => "Open311: the services (governance categories), XML",
        })
        .description(
            "Every category of the governance configuration: service_code is its GB/T \
             47678.5-2026 code (else its GB/T 30428.2 code, else its id); metadata false, type \
             realtime, group 事件/部件. Names in Chinese, or English with `locale=en` or \
             `Accept-Language: en`. Public.",
        );
    let op = answer(
        op,
        200,
        Some(fmt),
        "The services",
        schema_of::<Vec<Service>>(),
        "services",
    );
    error_docs(
        op,
        Some(fmt),
        &[
            (400, "A parameter is malformed (named)"),
            (503, "The case workflow is not running"),
        ],
    )
}

fn service_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("open311Service")
        .tag("open311")
        .summary("Open311: one service's definition (no attributes), JSON or XML by extension")
        .description(
            "`{file}` is the service code (2026 or legacy code, or category id) followed by \
             `.json` or `.xml`. No service has attributes (metadata is false). Public.",
        );
    let op = answer(
        op,
        200,
        None,
        "The service's definition",
        schema_of::<ServiceDefinition>(),
        "service_definition",
    );
    error_docs(
        op,
        None,
        &[
            (400, "A parameter is malformed (named)"),
            (404, "No such service, or the path names no format"),
            (503, "The case workflow is not running"),
        ],
    )
}

fn list_docs<'a>(op: TransformOperation<'a>, fmt: Fmt, id: &'a str) -> TransformOperation<'a> {
    let op = op
        .id(id)
        .tag("open311")
        .summary(match fmt {
            Fmt::Json => "Open311: citizens' requests and their status, JSON",
            Fmt::Xml => "Open311: citizens' requests and their status, XML",
        })
        .description(
            "Requests filed by citizens (camera and sensor cases are not published), newest \
             first, at most 1000. Without dates: the last 90 days; a range may not span more. \
             `open` until the case is 结案, 不予立案 or 作废; status_notes is the latest note a \
             person wrote for the citizen; expected_datetime the running stage's deadline. \
             Public.",
        );
    let op = answer(
        op,
        200,
        Some(fmt),
        "The requests",
        schema_of::<Vec<ServiceRequest>>(),
        "service_requests",
    );
    error_docs(
        op,
        Some(fmt),
        &[
            (400, "A parameter is malformed (named)"),
            (500, "The case store failed (logged)"),
            (
                503,
                "The case workflow is not running, or too many concurrent store calls",
            ),
        ],
    )
}

fn get_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("open311Request")
        .tag("open311")
        .summary("Open311: one request (a list of one), JSON or XML by extension")
        .description(
            "`{file}` is the request id (the case id) followed by `.json` or `.xml`. Public; \
             only citizens' requests.",
        );
    let op = answer(
        op,
        200,
        None,
        "The request",
        schema_of::<Vec<ServiceRequest>>(),
        "service_requests",
    );
    error_docs(
        op,
        None,
        &[
            (400, "A parameter is malformed (named)"),
            (404, "No such request, or the path names no format"),
            (500, "The case store failed (logged)"),
            (
                503,
                "The case workflow is not running, or too many concurrent store calls",
            ),
        ],
    )
}

/// The fields of `POST requests`, as the form and the JSON body carry them.
fn request_body_schema() -> Schema {
    json_schema!({
        "type": "object",
        "required": ["service_code"],
        "properties": {
            "api_key": {"type": "string", "maxLength": 256,
                "description": "With `[auth] http = \"required\"`: an API token of role inspector, operator, supervisor or admin (else 403). Not checked with `http = \"off\"`."},
            "jurisdiction_id": {"type": "string", "description": "Taken and ignored (one jurisdiction)."},
            "service_code": {"type": "string", "minLength": 1, "maxLength": 64,
                "description": "A service code (2026 or legacy code, or category id)."},
            "lat": {"type": "number", "minimum": -90, "maximum": 90,
                "description": "WGS-84 latitude; with long. Must lie in a town of the county model."},
            "long": {"type": "number", "minimum": -180, "maximum": 180,
                "description": "WGS-84 longitude; with lat."},
            "address_string": {"type": "string", "maxLength": 512,
                "description": "Where, in words; required without lat/long."},
            "address_id": {"type": "string", "description": "Taken and ignored."},
            "email": {"type": "string", "maxLength": 254, "description": "Kept for the operators; never published."},
            "device_id": {"type": "string", "maxLength": 128,
                "description": "With it, a repeated identical request within a day answers the first one's id (200) instead of opening another case."},
            "account_id": {"type": "string", "maxLength": 128},
            "first_name": {"type": "string", "maxLength": 64, "description": "Never published."},
            "last_name": {"type": "string", "maxLength": 64, "description": "Never published."},
            "phone": {"type": "string", "maxLength": 32, "description": "Never published."},
            "description": {"type": "string", "maxLength": 4000},
            "media_url": {"type": "string", "maxLength": 2048, "description": "An http(s) URL of a photo."}
        },
        "patternProperties": {
            "^attribute\\[[A-Za-z0-9_.-]{1,64}\\](\\[\\])?$": {"type": "string", "maxLength": 1024}
        },
        "additionalProperties": false,
    })
}

fn create_docs<'a>(op: TransformOperation<'a>, fmt: Fmt, id: &'a str) -> TransformOperation<'a> {
    let mut op = op
        .id(id)
        .tag("open311")
        .summary(match fmt {
            Fmt::Json => "Open311: file a citizen's request (a new case at 上报), JSON",
            Fmt::Xml => "Open311: file a citizen's request (a new case at 上报), XML",
        })
        .description(
            "Opens a case at 上报 with source `citizen`, placed by lat/long in the county model's \
             towns (and zones) so that dispatch routes it by location. The body is \
             form-urlencoded (or a JSON object of the same fields); every problem is listed, \
             each naming its field. `api_key` authenticates the client (see the field). A \
             retried request with the same `device_id` and fields answers the first one's id \
             with 200.",
        );
    let schema = request_body_schema();
    let media = |s: Schema| MediaType {
        schema: Some(SchemaObject {
            json_schema: s,
            example: None,
            external_docs: None,
        }),
        ..MediaType::default()
    };
    op.inner_mut().request_body = Some(ReferenceOr::Item(RequestBody {
        description: Some(format!(
            "The request's fields (at most {} KiB)",
            MAX_BODY / 1024
        )),
        content: IndexMap::from_iter([
            (
                "application/x-www-form-urlencoded".to_string(),
                media(schema.clone()),
            ),
            ("application/json".to_string(), media(schema)),
        ]),
        required: true,
        extensions: IndexMap::default(),
    }));
    let created = || schema_of::<Vec<RequestCreated>>();
    let op = answer(
        op,
        201,
        Some(fmt),
        "The new request: its id (the case id) and notice",
        created(),
        "service_requests",
    );
    let op = answer(
        op,
        200,
        Some(fmt),
        "A retried request (same device_id and fields): the id it was given before",
        created(),
        "service_requests",
    );
    error_docs(
        op,
        Some(fmt),
        &[
            (
                400,
                "Fields are missing or wrong (each named), or the place is outside the county",
            ),
            (
                403,
                "api_key missing, unknown, or of a role that may not report",
            ),
            (413, "The body is larger than 64 KiB"),
            (415, "The body is neither form-urlencoded nor JSON"),
            (500, "The case store failed (logged)"),
            (
                503,
                "The case workflow is not running, or too many concurrent store calls",
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Governance {
        Governance::built_in().unwrap()
    }

    #[test]
    fn xml_is_escaped_and_well_formed() {
        let e = Open311Error {
            code: 400,
            description: "a <b> & \"c\" \u{1} d".into(),
        };
        let r = Reply::list(StatusCode::BAD_REQUEST, Fmt::Xml, "errors", &[e]);
        assert_eq!(
            r.body,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><errors><error><code>400</code>\
             <description>a &lt;b&gt; &amp; &quot;c&quot; \u{FFFD} d</description></error>\
             </errors>"
        );
        let none = RequestCreated {
            service_request_id: "X".into(),
            service_notice: None,
            account_id: None,
        };
        let r = Reply::list(StatusCode::CREATED, Fmt::Xml, "service_requests", &[none]);
        assert!(r.body.ends_with(
            "<service_requests><request><service_request_id>X</service_request_id>\
             <service_notice/><account_id/></request></service_requests>"
        ));
    }

    #[test]
    fn services_carry_codes_names_and_groups() {
        let g = g();
        let parking = g.category("09009").unwrap();
        let s = service_of(parking, Lang::Zh);
        assert_eq!(
            (
                s.service_code.as_str(),
                s.service_name.as_str(),
                s.group.as_str()
            ),
            ("09009", "机动车乱停放", "事件")
        );
        assert!(s.keywords.contains("0505") && s.keywords.contains("illegal-parking"));
        let en = service_of(parking, Lang::En);
        assert_eq!(en.group, "event");
        assert!(
            en.description.contains("2 working hours"),
            "{}",
            en.description
        );
        // No 2026 code: the legacy one.
        let ponding = g.category("0406").unwrap();
        assert_eq!(service_code(ponding), "0406");
    }

    #[test]
    fn languages_from_locale_and_accept_language() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_LANGUAGE, v.parse().unwrap());
            m
        };
        assert_eq!(lang(None, &HeaderMap::new()), Ok(Lang::Zh));
        assert_eq!(lang(Some("en_US"), &h("zh")), Ok(Lang::En));
        assert!(lang(Some("fr"), &HeaderMap::new()).is_err());
        assert_eq!(lang(None, &h("fr-FR, en;q=0.8, zh;q=0.5")), Ok(Lang::En));
        assert_eq!(lang(None, &h("en;q=0.2, zh-CN")), Ok(Lang::Zh));
        assert_eq!(lang(None, &h("en;q=0")), Ok(Lang::Zh));
    }

    #[test]
    fn dates_in_the_county_offset() {
        let g = g();
        let ms = parse_date("start_date", "2026-09-21T09:00:00+08:00", false, &g).unwrap();
        assert_eq!(datetime(ms, &g), "2026-09-21T09:00:00+08:00");
        assert_eq!(
            parse_date("start_date", "2026-09-21", false, &g).unwrap(),
            parse_date("x", "2026-09-21T00:00:00+08:00", false, &g).unwrap()
        );
        let end = parse_date("end_date", "2026-09-21", true, &g).unwrap();
        assert_eq!(datetime(end, &g), "2026-09-21T23:59:59+08:00");
        let e = parse_date("start_date", "1790000000000", false, &g).unwrap_err();
        assert!(
            e.starts_with("start_date `1790000000000` is not a W3C"),
            "{e}"
        );
        assert!(parse_date("end_date", "yesterday", true, &g).is_err());
    }

    #[test]
    fn bodies_become_fields_and_problems_name_them() {
        let pairs = json_pairs(
            br#"{"service_code": "09009", "lat": 30.85, "long": "116.36", "email": null,
                 "attribute": {"plate": "A1", "seen": ["am", "pm"]}}"#,
        )
        .unwrap();
        let mut problems = Vec::new();
        let s = sent(pairs, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.lat.as_deref(), Some("30.85"));
        assert_eq!(s.long.as_deref(), Some("116.36"));
        assert_eq!(s.email, None);
        assert_eq!(s.attributes.len(), 3);
        assert!(json_pairs(b"[1]").is_err());
        assert!(json_pairs(br#"{"lat": [1]}"#)
            .unwrap_err()
            .contains("`lat`"));

        let pairs = vec![
            ("lon".to_string(), "1".to_string()),
            ("lat".to_string(), "1".to_string()),
            ("lat".to_string(), "2".to_string()),
            ("attribute[bad key]".to_string(), "x".to_string()),
        ];
        let mut problems = Vec::new();
        sent(pairs, &mut problems);
        assert!(problems[0].contains("`lon`") && problems[0].contains("`long`"));
        assert!(problems[1].contains("`lat` given more than once"));
        assert!(problems[2].contains("attribute[CODE]"));

        assert!(media_url("https://img.example/a.jpg"));
        for bad in [
            "javascript:alert(1)",
            "https://",
            "http:///x",
            "https://a b",
        ] {
            assert!(!media_url(bad), "{bad}");
        }
    }
}
