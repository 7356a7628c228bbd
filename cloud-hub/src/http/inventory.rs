//! `GET /api/v1/inventory`: the 家底 report ([`crate::platform::inventory`]) as JSON or CSV.

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::http::error::ApiError;
use crate::http::openapi::{
    content, errors, respond, schema_of, store_errors, viewer, with_header,
};
use crate::http::query::{from_text, Params, QueryFault, Repeats, Style};
use crate::http::state::{store_call, ApiState};
use crate::storage::store::Store;

/// Parameters of `GET /api/v1/inventory`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct InventoryParams {
    /// `json` (default) or `csv`.
    format: Option<Format>,
    /// The CSV table: `devices` (default) or `sources`.
    table: Option<Table>,
    /// A device silent this many seconds counts as stale (default 300).
    stale_after_s: Option<StaleAfter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "lowercase")]
enum Format {
    Json,
    Csv,
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| match v {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("`{other}` is not one of json, csv")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "lowercase")]
enum Table {
    Devices,
    Sources,
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| match v {
            "devices" => Ok(Table::Devices),
            "sources" => Ok(Table::Sources),
            other => Err(format!("`{other}` is not one of devices, sources")),
        })
    }
}

/// Whole seconds ≥ 1, as ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StaleAfter(i64);

impl JsonSchema for StaleAfter {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StaleAfter".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": 1, "maximum": u32::MAX, "default": 300})
    }
}

impl<'de> Deserialize<'de> for StaleAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |v| {
            v.parse::<u32>()
                .ok()
                .filter(|s| *s > 0)
                .map(|s| StaleAfter(i64::from(s) * 1000))
                .ok_or_else(|| format!("`{v}` is not a whole number of seconds ≥ 1"))
        })
    }
}

/// The inventory's own wording (`format: …`), and a repeated parameter's last value counts.
pub enum InventoryStyle {}

impl Style for InventoryStyle {
    type Rejection = ApiError;
    const REPEATS: Repeats = Repeats::LastWins;
    fn reject(fault: QueryFault) -> ApiError {
        ApiError::bad_request(match fault {
            QueryFault::Malformed(e) => format!("malformed query string: {e}"),
            QueryFault::Unknown { name, known } => {
                format!("unknown parameter `{name}` (known: {})", known.join(", "))
            }
            QueryFault::Repeated(name) => format!("{name}: given more than once"),
            QueryFault::Bad { name, detail } => format!("{name}: {detail}"),
        })
    }
}

pub(crate) fn inventory_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("getInventory")
        .tag("devices")
        .summary("The 家底 inventory: every device, its state and the data it delivered")
        .description(
            "Registered devices (county model) and devices seen on the wire only \
             (unregistered), with status, last contact and data volumes; JSON or CSV.",
        );
    let json = content(
        "The report (JSON), or one of its tables (CSV)",
        "application/json",
        schema_of::<crate::platform::inventory::Inventory>(),
    );
    let csv = content("", "text/csv", schemars::json_schema!({"type": "string"}));
    let mut r = json;
    r.content.extend(csv.content);
    let r = with_header(
        r,
        "Content-Disposition",
        "With `format=csv`: `attachment; filename=\"inventory-devices.csv\"` (or sources)",
        false,
    );
    let op = respond(op, 200, r);
    store_errors(viewer(errors(
        op,
        &[(
            400,
            "A parameter was refused (unknown, or a bad value): the message names it",
        )],
    )))
}

/// `format=json` (default) or `csv`, `table=devices` (default) or `sources` for CSV,
/// `stale_after_s` (default 300).
pub(crate) async fn inventory<S: Store>(
    State(st): State<ApiState<S>>,
    Params(p, _): Params<InventoryParams, InventoryStyle>,
) -> Result<Response, ApiError> {
    let csv = p.format == Some(Format::Csv);
    let sources = p.table == Some(Table::Sources);
    let stale_after_ms = p
        .stale_after_s
        .map_or(crate::platform::inventory::DEFAULT_STALE_AFTER_MS, |s| s.0);
    let statuses = store_call(&st.store_slots, "device list", st.store.devices()).await?;
    let data = store_call(&st.store_slots, "source list", st.store.sources()).await?;
    let now_ms = csb_wire::now_ms();
    let mut inv = crate::platform::inventory::build(
        st.county.as_deref(),
        &statuses,
        &data,
        now_ms,
        stale_after_ms,
    );
    // Desired configuration versions come from the fleet (a layer above the inventory).
    if let Some(fleet) = &st.fleet {
        for d in &mut inv.devices {
            d.config_desired = fleet.get(&d.id).and_then(|r| r.desired.map(|x| x.version));
        }
    }
    if !csv {
        return Ok(Json(inv).into_response());
    }
    let (body, name) = match sources {
        true => (inv.sources_csv(), "inventory-sources.csv"),
        false => (inv.devices_csv(), "inventory-devices.csv"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
