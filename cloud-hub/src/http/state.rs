//! What every handler is given: the store and its concurrency slots, the counters, and what
//! the hub was started with (county model, twin, broker health, access checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::Semaphore;

use crate::http::auth::HttpAccess;
use crate::http::error::ApiError;
use crate::ingest::metrics::Metrics;
use crate::storage::store::StoreError;

/// Bound on one store call from a request; the store's own scan limit bounds the work behind it.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Store calls that may run at once; each may hold a blocking thread for a scan, so more
/// requests than this get 503 instead of piling up threads.
const MAX_CONCURRENT_STORE_CALLS: usize = 16;

/// The case workflow the API serves.
pub type Cases = Arc<crate::cases::engine::Engine<crate::cases::store::SledCases>>;

pub struct ApiState<S> {
    pub(crate) store: Arc<S>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started: Instant,
    pub(crate) mqtt_addr: SocketAddr,
    pub(crate) store_slots: Arc<Semaphore>,
    pub(crate) snapshot_max_bytes: usize,
    /// `Some` with `[auth] http = "required"`.
    pub(crate) access: Option<HttpAccess>,
    /// The county model (`county_dir`), when one is loaded.
    pub(crate) county: Option<Arc<crate::platform::county::County>>,
    /// The digital twin (with a county model): NGSI-LD routes, health and metrics.
    pub(crate) twin: Option<Arc<crate::platform::twin::Twin>>,
    /// The MQTT broker's self-probe: health says whether devices can get in.
    pub(crate) broker: Option<Arc<crate::ingest::mqtt::probe::BrokerHealth>>,
    /// The case workflow (`/api/v1/cases`).
    pub(crate) cases: Option<Cases>,
    /// Open case change streams (`/api/v1/cases/stream`).
    pub(crate) case_streams: Arc<Semaphore>,
    /// Newly stored events, for the web page's live stream.
    pub(crate) activity: Option<Arc<crate::platform::activity::Activity>>,
    /// Open live streams (`/api/v1/live`).
    pub(crate) live_streams: Arc<Semaphore>,
    /// The hub's data directory, where enrolment tokens are redeemed for device credentials
    /// (`/api/v1/provision`); `None`: no enrolment.
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// Fleet configuration (`/api/v1/fleet/configs`).
    pub(crate) fleet: Option<Arc<crate::fleet::config::FleetConfig>>,
    /// Rollouts (`/api/v1/rollouts`) and device groups (`/api/v1/fleet/groups`).
    pub(crate) rollouts: Option<Arc<crate::fleet::rollout::Rollouts>>,
    pub(crate) groups: Option<Arc<crate::fleet::groups::Groups>>,
    /// The model warehouse (`/api/v1/models`).
    pub(crate) models: Option<Arc<crate::fleet::models::Warehouse>>,
}

impl<S> ApiState<S> {
    pub fn new(
        store: Arc<S>,
        metrics: Arc<Metrics>,
        started: Instant,
        mqtt_addr: SocketAddr,
        snapshot_max_bytes: usize,
    ) -> Self {
        ApiState {
            store,
            metrics,
            started,
            mqtt_addr,
            store_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_STORE_CALLS)),
            snapshot_max_bytes,
            access: None,
            county: None,
            twin: None,
            broker: None,
            cases: None,
            case_streams: Arc::new(Semaphore::new(crate::http::sse::MAX_STREAMS)),
            activity: None,
            live_streams: Arc::new(Semaphore::new(crate::http::sse::MAX_STREAMS)),
            data_dir: None,
            fleet: None,
            rollouts: None,
            groups: None,
            models: None,
        }
    }

    /// Serves the model warehouse at `/api/v1/models`.
    pub fn with_models(mut self, models: Arc<crate::fleet::models::Warehouse>) -> Self {
        self.models = Some(models);
        self
    }

    /// Serves rollouts at `/api/v1/rollouts` and device groups at `/api/v1/fleet/groups`.
    pub fn with_rollouts(
        mut self,
        rollouts: Arc<crate::fleet::rollout::Rollouts>,
        groups: Arc<crate::fleet::groups::Groups>,
    ) -> Self {
        self.rollouts = Some(rollouts);
        self.groups = Some(groups);
        self
    }

    /// Serves fleet configuration at `/api/v1/fleet/configs`.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::config::FleetConfig>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Enrols gateways with one-time tokens kept in `data_dir` (`/api/v1/provision`).
    pub fn with_enrolment(mut self, data_dir: std::path::PathBuf) -> Self {
        self.data_dir = Some(data_dir);
        self
    }

    /// Streams newly stored events to the web page (`/api/v1/live`).
    pub fn with_activity(mut self, activity: Arc<crate::platform::activity::Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Serves the case workflow at `/api/v1/cases`.
    pub fn with_cases(mut self, cases: Cases) -> Self {
        self.cases = Some(cases);
        self
    }

    /// Reports the broker's health (`mqtt.broker`; `degraded` and 503 while it fails).
    pub fn with_broker(mut self, health: Arc<crate::ingest::mqtt::probe::BrokerHealth>) -> Self {
        self.broker = Some(health);
        self
    }

    /// Serves the twin: the NGSI-LD API and the change stream ([`crate::http::ngsi`]).
    pub fn with_twin(mut self, twin: Arc<crate::platform::twin::Twin>) -> Self {
        self.twin = Some(twin);
        self
    }

    /// Serves the county model at `GET /api/v1/county`.
    pub fn with_county(mut self, county: Arc<crate::platform::county::County>) -> Self {
        self.county = Some(county);
        self
    }

    /// Requires bearer tokens and signed uploads (`[auth] http = "required"`).
    pub fn with_http_access(mut self, access: HttpAccess) -> Self {
        self.access = Some(access);
        self
    }
}

// Manual impl: deriving would demand `S: Clone`.
impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            started: self.started,
            mqtt_addr: self.mqtt_addr,
            store_slots: self.store_slots.clone(),
            snapshot_max_bytes: self.snapshot_max_bytes,
            access: self.access.clone(),
            county: self.county.clone(),
            twin: self.twin.clone(),
            broker: self.broker.clone(),
            cases: self.cases.clone(),
            case_streams: self.case_streams.clone(),
            activity: self.activity.clone(),
            live_streams: self.live_streams.clone(),
            data_dir: self.data_dir.clone(),
            fleet: self.fleet.clone(),
            rollouts: self.rollouts.clone(),
            groups: self.groups.clone(),
            models: self.models.clone(),
        }
    }
}

/// Runs one store call with a concurrency slot and a time limit.
pub async fn store_call<T>(
    slots: &Semaphore,
    what: &str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    let Ok(_slot) = slots.try_acquire() else {
        tracing::warn!(what, "store busy: too many concurrent requests");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many concurrent requests; retry {what} shortly"),
        ));
    };
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::warn!(what, "store call timed out");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} took longer than {STORE_TIMEOUT:?}; narrow the query"),
            ))
        }
    }
}
