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
use crate::storage::store::{Store, StoreHealth, StoreStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// 200: the store answers and writes, and devices can get in.
    Ok,
    /// 503: the store fails or cannot write (a full disk), or the broker admits no one;
    /// `reasons` says which.
    Degraded,
}

/// The store's sizes (or why it could not say), and how its writes and disk are doing.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StorageHealth {
    Ok {
        #[serde(flatten)]
        stats: StoreStats,
        /// Bytes of memory the record logs' indexes hold.
        index_bytes: u64,
        #[serde(flatten)]
        health: StoreHealth,
    },
    Failed {
        /// Why the store could not report.
        error: String,
        #[serde(flatten)]
        health: StoreHealth,
    },
}

#[derive(Serialize, JsonSchema)]
pub struct HealthBody {
    status: HealthStatus,
    /// Why the hub is degraded, each naming its part (`store: …`, `mqtt broker: …`); empty
    /// when `ok`.
    reasons: Vec<String>,
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
            "Degraded: the store fails or cannot write, or the broker admits no one (`reasons`)",
            "application/json",
            schema_of::<HealthBody>(),
        ),
    )
}

/// 200 `ok`, or 503 `degraded` with its reasons when the store fails or cannot write, or
/// devices cannot get in.
pub(crate) async fn health<S: Store>(
    State(st): State<ApiState<S>>,
) -> (StatusCode, Json<HealthBody>) {
    let ingest = st.metrics.snapshot();
    let evidence = st.metrics.evidence();
    // Why the hub is degraded, if it is: each reason names its part.
    let mut reasons = Vec::new();
    // Writes that fail (a full disk) leave reads working: still unhealthy, as nothing new is
    // stored or acked.
    let health = st.store.health();
    let store_reasons = health.reasons();
    let (mut status, storage) =
        match store_call(&st.store_slots, "store stats", st.store.stats()).await {
            Ok(stats) => (
                StatusCode::OK,
                StorageHealth::Ok {
                    stats,
                    index_bytes: st.store.index_bytes(),
                    health,
                },
            ),
            Err(e) => {
                reasons.push(format!("store: {}", e.message));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    StorageHealth::Failed {
                        error: e.message,
                        health,
                    },
                )
            }
        };
    if !store_reasons.is_empty() {
        status = StatusCode::SERVICE_UNAVAILABLE;
        reasons.extend(store_reasons);
    }
    // Devices that cannot get in make the hub unhealthy, whatever the store says.
    let broker = st.broker.as_ref().map(|b| b.snapshot());
    if let Some(b) = broker
        .as_ref()
        .filter(|b| !matches!(b.state, BrokerState::Ok | BrokerState::Starting))
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
        reasons.push(format!(
            "mqtt broker: {}{}",
            serde_json::to_value(b.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            b.last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let body = HealthBody {
        status: if status == StatusCode::OK {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        },
        reasons,
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
