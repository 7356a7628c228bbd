//! `GET /api/v1/health`: liveness for load balancers and supervisors (open without a token),
//! with the counters of every stage and the store's sizes.

use aide::transform::TransformOperation;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;

use crate::http::openapi::{content, respond, schema_of};
use crate::http::state::{store_call, ApiState};
use crate::ingest::metrics::{EvidenceCounters, HttpAuthCounters, IngestSnapshot, MqttSnapshot};
use crate::ingest::mqtt::probe::BrokerState;
use crate::platform::twin::CountersSnapshot;
use crate::storage::store::{Store, StoreStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// 200: the store answers and devices can get in.
    Ok,
    /// 503: the store fails, or the broker admits no one.
    Degraded,
}

/// The store's sizes, or why it could not say.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StorageHealth {
    Ok {
        #[serde(flatten)]
        stats: StoreStats,
        /// Bytes of memory the record logs' indexes hold.
        index_bytes: u64,
    },
    Failed {
        /// Why the store could not report.
        error: String,
    },
}

#[derive(Serialize, JsonSchema)]
pub struct HealthBody {
    status: HealthStatus,
    /// The hub's version.
    version: &'static str,
    uptime_s: u64,
    /// Where devices connect (MQTT).
    mqtt_addr: String,
    ingest: IngestSnapshot,
    mqtt: MqttSnapshot,
    evidence: EvidenceCounters,
    http_auth: HttpAuthCounters,
    storage: StorageHealth,
    /// The digital twin's counters; `null` without a county model.
    twin: Option<CountersSnapshot>,
}

pub(crate) fn health_docs(op: TransformOperation) -> TransformOperation {
    let op = op
        .id("health")
        .tag("operations")
        .summary("Liveness, counters of every stage, store sizes")
        .description("Open without a token: load balancers and supervisors probe it.");
    let op = respond(
        op,
        200,
        content(
            "Healthy (`status: ok`)",
            "application/json",
            schema_of::<HealthBody>(),
        ),
    );
    respond(
        op,
        503,
        content(
            "Degraded: the store fails, or the broker admits no one",
            "application/json",
            schema_of::<HealthBody>(),
        ),
    )
}

/// 200 `ok`, or 503 `degraded` when the store fails or devices cannot get in.
pub(crate) async fn health<S: Store>(
    State(st): State<ApiState<S>>,
) -> (StatusCode, Json<HealthBody>) {
    let ingest = st.metrics.snapshot();
    let evidence = st.metrics.evidence();
    let (status, storage) = match store_call(&st.store_slots, "store stats", st.store.stats()).await
    {
        Ok(stats) => (
            StatusCode::OK,
            StorageHealth::Ok {
                stats,
                index_bytes: st.store.index_bytes(),
            },
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            StorageHealth::Failed { error: e.message },
        ),
    };
    // Devices that cannot get in make the hub unhealthy, whatever the store says.
    let broker = st.broker.as_ref().map(|b| b.snapshot());
    let status = match &broker {
        Some(b) if !matches!(b.state, BrokerState::Ok | BrokerState::Starting) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => status,
    };
    let body = HealthBody {
        status: if status == StatusCode::OK {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        },
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: st.started.elapsed().as_secs(),
        mqtt_addr: st.mqtt_addr.to_string(),
        ingest,
        mqtt: st.metrics.mqtt(broker),
        evidence,
        http_auth: st.metrics.http_auth(),
        storage,
        twin: st.twin.as_ref().map(|t| t.counters.snapshot()),
    };
    (status, Json(body))
}
