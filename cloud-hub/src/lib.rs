//! City Super Brain hub: an embedded MQTT broker that edge agents publish to, an ingest loop that
//! validates and stores what they send, and a REST API over the stored data.
//!
//! How a detection event travels:
//! 1. An edge agent publishes it (QoS 1) on `csb/v1/{site}/{device}/event` to the embedded
//!    rumqttd broker ([`broker`]).
//! 2. The hub's in-process link (subscribed to every topic) receives it in a batch; [`ingest`]
//!    checks size, topic, schema, fields and that the payload's site/device match the topic,
//!    counting, logging and quarantining ([`quarantine`]) every refused message.
//! 3. Valid messages and quarantine entries of the batch are written to the [`store`] and
//!    flushed to disk together (deduplicated on the message id); the next batch is validated
//!    meanwhile.
//! 4. Only then does ingest ack the batch's ids to each device on `csb/v1/{site}/{device}/ack`;
//!    an edge keeps what is unacked and resends it.
//! 5. [`api`] serves the stored events, telemetry, quarantine, device states, health and metrics
//!    over HTTP.
//!
//! A rule event may name an evidence snapshot (`rule.snapshot`): the agent uploads the JPEG
//! separately with `PUT /api/v1/snapshots/{id}` (MQTT messages stay small), the [`store`] keeps
//! it durably, and `GET /api/v1/events/{id}/snapshot` follows the reference.
//!
//! Use [`serve`] (or [`Hub::start`] then [`Hub::run`] to learn the addresses before running).

// The layers, lowest first: support, storage, ingest, platform, cases, http, then this file
// (`Hub`) and config, then bench. Each uses only those below it (ARCHITECTURE.md;
// tests/layers.rs enforces it). `web` (the embedded page) will sit above `http`.
pub mod bench;
pub mod cases;
pub mod config;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod platform;
pub mod storage;
pub mod support;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use config::{AuthConfig, ConfigError, DeviceAuth, HttpAuth, HubConfig};
pub use ingest::metrics::{Metrics, UploadReject};
pub use storage::quarantine::RejectReason;
pub use storage::store::{SledStore, Store, StoreError};

use fleet::config::FleetConfig;
use http::tokens::{TokenError, TokenRegistry};
use ingest::devices::{DeviceError, DeviceRegistry};
use ingest::mqtt::broker::{Broker, BrokerError, BrokerSettings, BrokerTls};
use ingest::mqtt::front::{AuthHook, LoginCheck};
use ingest::{Ingest, IngestError, IngestSettings};

/// Client id of the hub's in-process broker link.
pub const INGEST_LINK_ID: &str = "hub-ingest";
/// What the ingest link subscribes to: every topic, so strays reach the quarantine.
pub const INGEST_FILTER: &str = "#";
/// How long shutdown waits for open HTTP requests to finish.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for ingest to drain and flush.
const INGEST_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the twin to write its pending history.
const TWIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Tls(#[from] ingest::mqtt::tls::TlsError),
    #[error("device credentials: {0}")]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    County(#[from] platform::county::CountyError),
    #[error(transparent)]
    Governance(#[from] cases::config::GovernanceError),
    #[error("case store: {0}")]
    Cases(#[from] cases::store::CaseStoreError),
    #[error("case workflow: {0}")]
    CaseEngine(#[from] cases::engine::EngineError),
    #[error("API tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error("fleet configuration: {0}")]
    Fleet(#[from] fleet::config::FleetError),
    #[error("rollouts: {0}")]
    Rollouts(#[from] fleet::rollout::RolloutError),
    #[error("device groups: {0}")]
    Groups(#[from] fleet::groups::GroupError),
    #[error("{0}")]
    Models(#[from] fleet::models::WarehouseError),
    #[error("HTTP listener: {0}")]
    HttpListener(std::io::Error),
    #[error("HTTP server on {addr} failed: {cause}")]
    Http {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("ingest stopped: {0}")]
    Ingest(IngestError),
    #[error("{task} task panicked: {reason}")]
    Panicked { task: &'static str, reason: String },
    #[error("webhook of department `{department}` ([webhooks] in the config): {reason}")]
    Webhook { department: String, reason: String },
}

/// A started hub: store open, broker listening, ingest link subscribed. Nothing is consumed or
/// served until [`Hub::run`].
pub struct Hub<S: Store = SledStore> {
    config: HubConfig,
    http: TcpListener,
    http_addr: SocketAddr,
    broker: Broker,
    ingest: Ingest<S>,
    store: Arc<S>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// `Some` with `[auth] http = "required"`.
    http_access: Option<http::HttpAccess>,
    /// The county model, when `config.county_dir` names one.
    county: Option<Arc<platform::county::County>>,
    /// The digital twin of the county (with a county model), and its update channel.
    twin: Option<(
        Arc<platform::twin::Twin>,
        tokio::sync::mpsc::Receiver<platform::twin::Input>,
    )>,
    /// The case workflow and the end of its feed from ingest.
    cases: (Arc<CaseEngine>, cases::engine::FeedRx),
    /// The departments' webhooks and their delivery queue, when any is configured.
    webhooks: Option<Webhooks>,
    /// Newly stored events, for the web page's live stream.
    activity: Arc<platform::activity::Activity>,
    /// Fleet configuration and the agents' answers to its pushes.
    fleet: FleetParts,
    /// The model warehouse (`{data_dir}/models`).
    models: Arc<fleet::models::Warehouse>,
}

/// The fleet configuration, the agents' answers to its pushes, and news of devices coming online.
struct FleetParts {
    fleet: Arc<FleetConfig>,
    rollouts: Arc<fleet::rollout::Rollouts>,
    groups: Arc<fleet::groups::Groups>,
    replies: tokio::sync::mpsc::Receiver<csb_wire::CommandReply>,
    online: tokio::sync::mpsc::Receiver<String>,
}

/// What the webhook sending task needs.
struct Webhooks {
    rx: tokio::sync::mpsc::Receiver<cases::webhook::Delivery>,
    hooks: Arc<std::collections::HashMap<String, cases::webhook::Hook>>,
    retry: cases::webhook::Retry,
}

/// Checks `[webhooks]` as the hub would start it: each department in the governance
/// configuration (`governance_dir`, else the built-in defaults), each secret readable
/// (`cloud-hub check-config`).
pub fn check_webhooks(config: &HubConfig) -> Result<usize, HubError> {
    let governance = match &config.governance_dir {
        Some(dir) => cases::config::Governance::load(dir)?,
        None => cases::config::Governance::built_in()?,
    };
    Ok(load_hooks(config, &governance)?.len())
}

/// Reads each configured webhook's secret and checks its department exists.
fn load_hooks(
    config: &HubConfig,
    governance: &cases::config::Governance,
) -> Result<std::collections::HashMap<String, cases::webhook::Hook>, HubError> {
    let mut hooks = std::collections::HashMap::new();
    for h in &config.webhooks.hooks {
        let fail = |reason: String| HubError::Webhook {
            department: h.department.clone(),
            reason,
        };
        if !governance.departments.iter().any(|d| d.id == h.department) {
            return Err(fail(format!(
                "no such department in {}",
                governance.dir.join(cases::config::DEPARTMENTS).display()
            )));
        }
        let text = std::fs::read_to_string(&h.secret_file).map_err(|e| {
            fail(format!(
                "cannot read secret_file {}: {e}",
                h.secret_file.display()
            ))
        })?;
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.len() < 16 {
            return Err(fail(format!(
                "the secret in {} is shorter than 16 bytes",
                h.secret_file.display()
            )));
        }
        let url = reqwest::Url::parse(&h.url).map_err(|e| fail(format!("url: {e}")))?;
        hooks.insert(
            h.department.clone(),
            cases::webhook::Hook {
                url,
                secret: secret.as_bytes().into(),
            },
        );
    }
    Ok(hooks)
}

/// The case workflow on the embedded case store.
pub type CaseEngine = cases::engine::Engine<cases::store::SledCases>;

/// How long shutdown waits for the case workflow to take in what ingest stored last.
const CASES_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a hub until `shutdown` resolves: see [`Hub::start`] and [`Hub::run`].
/// `config.http_addr` is not used: the caller binds `http`.
pub async fn serve(
    config: HubConfig,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    Hub::start(config, http).await?.run(shutdown).await
}

impl Hub<SledStore> {
    /// Opens the sled store in `config.data_dir`, then starts the broker (see
    /// [`Hub::start_with_store`]).
    pub async fn start(config: HubConfig, http: TcpListener) -> Result<Self, HubError> {
        config.validate()?;
        let (dir, options) = (config.data_dir.clone(), config.store_options());
        let quarantine_max = config.quarantine_max_entries;
        let retention = config.telemetry_retention;
        let store = tokio::task::spawn_blocking(move || {
            SledStore::open_with(&dir, &options).map(|s| {
                s.with_quarantine_max(quarantine_max)
                    .with_telemetry_retention(retention)
            })
        })
        .await
        .map_err(|e| HubError::Panicked {
            task: "store open",
            reason: e.to_string(),
        })??;
        Hub::start_with_store(config, http, store).await
    }
}

/// Opens the twin's history database (`{data_dir}/twin`) and builds the twin of `county`. A
/// history that cannot be opened does not stop the hub: the twin then runs without one (live
/// state only; the temporal API answers 503), and says so.
async fn start_twin(
    config: &HubConfig,
    county: Arc<platform::county::County>,
) -> Result<Arc<platform::twin::Twin>, HubError> {
    let dir = config.data_dir.join("twin");
    let retention_ms = i64::from(config.twin_history_days) * 86_400_000;
    let t = tokio::task::spawn_blocking(move || {
        match platform::twin::Twin::open(Some(&county), &dir, retention_ms) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "digital twin runs without history (no temporal API, no restore on restart)"
                );
                platform::twin::Twin::new(Some(&county), None, retention_ms)
            }
        }
    })
    .await
    .map_err(|e| HubError::Panicked {
        task: "twin open",
        reason: e.to_string(),
    })?;
    Ok(Arc::new(t))
}

/// Loads the governance configuration (the built-in defaults unless `governance_dir` names a
/// folder), opens the case store (`{data_dir}/cases`) and builds the workflow; a workflow that
/// never ran starts at the event log's end.
async fn start_cases<S: Store>(
    config: &HubConfig,
    county: Option<Arc<platform::county::County>>,
    store: &S,
    commands: Arc<dyn cases::engine::Commands>,
) -> Result<(Arc<CaseEngine>, Option<Webhooks>), HubError> {
    let governance = match &config.governance_dir {
        Some(dir) => cases::config::Governance::load(dir)?,
        None => cases::config::Governance::built_in()?,
    };
    let hooks = load_hooks(config, &governance)?;
    let dir = config.data_dir.join("cases");
    let case_store = tokio::task::spawn_blocking(move || cases::store::SledCases::open(&dir))
        .await
        .map_err(|e| HubError::Panicked {
            task: "case store open",
            reason: e.to_string(),
        })??;
    let places: Arc<dyn cases::intake::Locate> = match county {
        Some(c) => Arc::new(cases::intake::CountyPlaces(c)),
        None => Arc::new(cases::intake::Nowhere),
    };
    let mut engine = cases::engine::Engine::new(
        Arc::new(case_store),
        Arc::new(governance),
        Arc::new(support::clock::SystemClock),
        places,
    )
    .with_commands(commands);
    let mut webhooks = None;
    if !hooks.is_empty() {
        let (sender, rx) = cases::webhook::queue();
        let retry = config.webhooks.retry();
        engine = engine.with_webhooks(hooks.keys().cloned(), Arc::new(sender), retry);
        tracing::info!(departments = ?hooks.keys().collect::<Vec<_>>(), "department webhooks on");
        webhooks = Some(Webhooks {
            rx,
            hooks: Arc::new(hooks),
            retry,
        });
    }
    let engine = Arc::new(engine);
    engine.start_at(store.events_end())?;
    tracing::info!(
        governance = %engine.governance().dir.display(),
        categories = engine.governance().categories.len(),
        "case workflow ready"
    );
    Ok((engine, webhooks))
}

/// Commands to agents (the workflow's re-checks, the fleet's configurations), handed to
/// ingest to sign and publish.
#[derive(Clone)]
struct OutboundCommands(tokio::sync::mpsc::Sender<ingest::pipeline::Outbound>);

impl OutboundCommands {
    fn hand_on(&self, c: &csb_wire::Command) -> bool {
        let Ok(topic) = csb_wire::Topic::new(&c.site, &c.device, csb_wire::Channel::Cmd) else {
            return false;
        };
        let Ok(payload) = serde_json::to_vec(c) else {
            return false;
        };
        self.0
            .try_send(ingest::pipeline::Outbound { topic, payload })
            .is_ok()
    }
}

impl cases::engine::Commands for OutboundCommands {
    fn send(&self, c: &csb_wire::Command) -> bool {
        self.hand_on(c)
    }
}

impl fleet::Commands for OutboundCommands {
    fn send(&self, c: &csb_wire::Command) -> bool {
        self.hand_on(c)
    }
}

/// Agents' command replies: configuration answers to the fleet, the rest (re-checks) to the
/// case workflow. Never waits (ingest's contract): a full queue drops the reply, and the
/// command is sent and answered again.
struct ReplyRouter {
    cases: Arc<cases::engine::CaseFeed>,
    fleet: tokio::sync::mpsc::Sender<csb_wire::CommandReply>,
}

impl ingest::pipeline::ReplySink for ReplyRouter {
    fn reply(&self, reply: csb_wire::CommandReply) -> bool {
        if reply.id.starts_with(fleet::config::ID_PREFIX) {
            self.fleet.try_send(reply).is_ok()
        } else {
            ingest::pipeline::ReplySink::reply(&*self.cases, reply)
        }
    }
}

/// Answers waiting for the fleet task.
const FLEET_REPLIES: usize = 256;
/// How often pending configurations are sent again (an offline agent gets one soon after it
/// is back).
const FLEET_RESEND: Duration = Duration::from_secs(5);

/// Takes the agents' answers and sends pending configurations again; ends when ingest (the
/// only sender of answers) has stopped.
async fn run_fleet(parts: FleetParts) {
    let FleetParts {
        fleet,
        rollouts,
        groups: _,
        mut replies,
        mut online,
    } = parts;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = replies.recv() => {
                let Some(r) = r else { break };
                let f = fleet.clone();
                // The record is synced to disk: not on a runtime thread.
                match tokio::task::spawn_blocking(move || f.on_reply(&r)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("fleet: an agent's answer not recorded ({e}); it answers the next send again"),
                    Err(e) => tracing::error!("fleet: {e}"),
                }
            }
            // Both take the fleet's lock, which a change holds while it syncs the file: off the
            // runtime threads.
            Some(device) = online.recv() => {
                let f = fleet.clone();
                let _ = tokio::task::spawn_blocking(move || f.came_online(&device)).await;
            }
            _ = tick.tick() => {
                let (f, r) = (fleet.clone(), rollouts.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    f.sweep();
                    r.tick();
                })
                .await;
            }
        }
    }
}

/// The MQTT front's CONNECT check: user name `SITE/DEVICE`, password its secret. The front
/// counts and logs refusals (`auth_refused`, `mqtt.refused_by_reason`).
fn auth_hook(devices: Arc<DeviceRegistry>) -> AuthHook {
    AuthHook(Arc::new(move |user: &str, pass: &str| {
        match devices.check(user, pass) {
            Some(true) => LoginCheck::Accepted,
            Some(false) => LoginCheck::WrongSecret,
            None => LoginCheck::UnknownDevice,
        }
    }))
}

/// The token registry, and the device registry for signed evidence uploads: the one MQTT auth
/// already holds, else its own (uploads are signed even with `auth.devices = "off"`).
fn http_access(
    config: &HubConfig,
    devices: Option<Arc<DeviceRegistry>>,
) -> Result<http::HttpAccess, HubError> {
    let tokens = TokenRegistry::open(&config.data_dir)?;
    if tokens.is_empty() {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "auth.http = \"required\" and no API token is issued yet: every request but \
             GET /api/v1/health is refused until `cloud-hub token add`"
        );
    }
    let devices = match devices {
        Some(d) => d,
        None => Arc::new(DeviceRegistry::open(&config.data_dir)?),
    };
    let sessions = http::sessions::Sessions::open(&config.data_dir, csb_wire::now_ms());
    Ok(http::HttpAccess::new(
        Arc::new(tokens),
        Arc::new(sessions),
        devices,
    ))
}

impl<S: Store> Hub<S> {
    /// Starts the broker on `config.mqtt_addr` and returns once it answers MQTT, with the ingest
    /// link subscribed to every topic: events, telemetry and status are ingested, anything else
    /// a client publishes is quarantined (except the hub's own outbound channels).
    pub async fn start_with_store(
        config: HubConfig,
        http: TcpListener,
        store: S,
    ) -> Result<Self, HubError> {
        config.validate()?;
        let started = Instant::now();
        let http_addr = http.local_addr().map_err(HubError::HttpListener)?;
        let metrics = Arc::new(Metrics::default());
        let devices = match config.auth.devices {
            DeviceAuth::Off => None,
            DeviceAuth::Required => {
                let reg = DeviceRegistry::open(&config.data_dir)?;
                if reg.is_empty() {
                    tracing::warn!(
                        data_dir = %config.data_dir.display(),
                        "auth.devices = \"required\" and no device has credentials yet: \
                         every MQTT connection is refused until `cloud-hub device add`"
                    );
                }
                Some(Arc::new(reg))
            }
        };
        let http_access = match config.auth.http {
            HttpAuth::Off => None,
            HttpAuth::Required => Some(http_access(&config, devices.clone())?),
        };
        let county = match &config.county_dir {
            None => None,
            Some(dir) => {
                let c = platform::county::County::load(dir)?;
                tracing::info!(dir = %dir.display(), "county model: {}", c.summary());
                for w in &c.warnings {
                    tracing::warn!(dir = %dir.display(), "county model: {w}");
                }
                Some(Arc::new(c))
            }
        };
        let tls = match &config.mqtt_tls {
            None => None,
            Some(t) => {
                let cert = ingest::mqtt::tls::load(&t.cert_file, &t.key_file)?;
                Some(BrokerTls {
                    acceptor: cert.acceptor,
                    leaf: cert.leaf,
                    handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
                })
            }
        };
        let settings = BrokerSettings {
            listen: config.mqtt_addr,
            max_payload_bytes: config.mqtt_max_payload_bytes,
            max_devices: config.mqtt_max_connections,
            max_inflight: config.mqtt_max_inflight,
            connect_timeout_ms: config.mqtt_connect_timeout_ms,
            auth: devices.clone().map(auth_hook),
            tls,
            probe_interval: Duration::from_millis(config.mqtt_probe_interval_ms),
            counters: metrics.mqtt.clone(),
        };
        // One filter for everything: overlapping filters would deliver a message once per match.
        let filters = [INGEST_FILTER.to_string()];
        let (broker, link) = Broker::start(&settings, INGEST_LINK_ID, &filters).await?;
        let store = Arc::new(store);
        let twin = match &county {
            None => None,
            Some(c) => Some(start_twin(&config, c.clone()).await?),
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(ingest::pipeline::OUTBOUND_CAPACITY);
        let commands = Arc::new(OutboundCommands(out_tx));
        let fleet = Arc::new(FleetConfig::open(
            &config.data_dir,
            commands.clone(),
            Arc::new(support::clock::SystemClock),
            FLEET_RESEND,
        )?);
        let models = Arc::new(fleet::models::Warehouse::open(&config.data_dir)?);
        let last_status = Arc::new(fleet::health::LastStatus::default());
        let groups = Arc::new(fleet::groups::Groups::open(&config.data_dir)?);
        let rollouts = Arc::new(fleet::rollout::Rollouts::open(
            &config.data_dir,
            fleet.clone(),
            last_status.clone(),
            models.clone(),
            Some(groups.clone()),
            Arc::new(support::clock::SystemClock),
        )?);
        let (fleet_tx, fleet_rx) = tokio::sync::mpsc::channel(FLEET_REPLIES);
        let (online_tx, online_rx) = tokio::sync::mpsc::channel(FLEET_REPLIES);
        let (engine, webhooks) = start_cases(&config, county.clone(), &*store, commands).await?;
        let (case_feed, case_rx) = cases::engine::feed();
        let activity = Arc::new(platform::activity::Activity::default());
        let case_feed = Arc::new(case_feed);
        let ingest = Ingest::new(
            link,
            store.clone(),
            metrics.clone(),
            IngestSettings {
                max_payload_bytes: config.ingest_max_payload_bytes,
                devices,
            },
        )
        .with_sink(case_feed.clone())
        .with_sink(activity.clone())
        .with_sink(Arc::new(fleet::config::OnlineFeed(online_tx)))
        .with_sink(last_status)
        .with_replies(Arc::new(ReplyRouter {
            cases: case_feed,
            fleet: fleet_tx,
        }))
        .with_outbound(out_rx);
        // Ingest hands each durable batch to the twin (never waiting on it).
        let (ingest, twin) = match twin {
            None => (ingest, None),
            Some(t) => {
                let (feed, rx) = platform::twin::channel(t.clone());
                (ingest.with_sink(Arc::new(feed)), Some((t, rx)))
            }
        };
        tracing::info!(
            mqtt = %broker.addr(),
            http = %http_addr,
            data_dir = %config.data_dir.display(),
            "hub started"
        );
        Ok(Hub {
            config,
            http,
            http_addr,
            broker,
            ingest,
            store,
            metrics,
            started,
            http_access,
            county,
            twin,
            cases: (engine, case_rx),
            webhooks,
            activity,
            fleet: FleetParts {
                fleet,
                rollouts,
                groups,
                replies: fleet_rx,
                online: online_rx,
            },
            models,
        })
    }

    /// The model warehouse (rollouts take their models from it).
    pub fn models(&self) -> Arc<fleet::models::Warehouse> {
        self.models.clone()
    }

    /// The case workflow (tests and the CLI act on it directly).
    pub fn cases(&self) -> Arc<CaseEngine> {
        self.cases.0.clone()
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.addr()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The hub's counters (also served by `/api/v1/health`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves HTTP and runs ingest until `shutdown` resolves (or either fails). Then: HTTP
    /// stops taking requests, the MQTT server closes, ingest drains what it already holds, the
    /// store is flushed. rumqttd's router thread cannot be stopped and stays idle until the
    /// process exits; binaries should exit once this returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HubError> {
        let Hub {
            config,
            http,
            http_addr,
            mut broker,
            ingest,
            store,
            metrics,
            started,
            http_access,
            county,
            twin,
            cases: (engine, case_rx),
            webhooks,
            activity,
            fleet,
            models,
        } = self;
        let mut state = http::ApiState::new(
            store.clone(),
            metrics,
            started,
            broker.addr(),
            config.snapshot_max_bytes,
        );
        state = state.with_broker(broker.health());
        if let Some(a) = http_access {
            state = state.with_http_access(a);
        }
        if let Some(c) = county {
            state = state.with_county(c);
        }
        state = state.with_cases(engine.clone());
        state = state.with_activity(activity.clone());
        state = state.with_enrolment(config.data_dir.clone());
        state = state.with_fleet(fleet.fleet.clone());
        state = state.with_rollouts(fleet.rollouts.clone(), fleet.groups.clone());
        state = state.with_models(models);
        // Ends when ingest (the only sender of answers) has stopped.
        let fleet_task = tokio::spawn(run_fleet(fleet));
        if !http::web::built() {
            tracing::warn!(
                "the web page was not built into this hub: `/` says so; run `make web`, then \
                 rebuild cloud-hub"
            );
        }
        // Ends the case change streams at shutdown.
        let case_feed = engine.clone();
        // Deliveries still under way at shutdown go again after the restart (their lease).
        if let Some(w) = webhooks {
            let e = engine.clone();
            let done = Arc::new(move |d: cases::webhook::Delivery, outcome| {
                if let Err(err) = e.delivered(&d, outcome) {
                    tracing::error!(case = d.case, delivery = d.id, error = %err,
                        "webhook outcome not recorded; the delivery goes again");
                }
            });
            tokio::spawn(cases::webhook::run(
                w.rx,
                w.hooks,
                w.retry,
                Arc::new(support::clock::SystemClock),
                done,
            ));
        }
        let (twin, twin_rx) = match twin {
            Some((t, rx)) => (Some(t), Some(rx)),
            None => (None, None),
        };
        if let Some(t) = &twin {
            state = state.with_twin(t.clone());
        }
        // Ends when ingest (the only feeder) has stopped, after writing pending history.
        let twin_task = match (&twin, twin_rx) {
            (Some(t), Some(rx)) => Some(tokio::spawn(platform::twin::run(t.clone(), rx))),
            _ => None,
        };
        // Its own thread (sled is blocking); ends when ingest, its only feeder, has stopped.
        let cases_thread = {
            let (store, rt) = (store.clone(), tokio::runtime::Handle::current());
            let settings = cases::engine::RunSettings {
                sweep_every: Duration::from_millis(config.case_sweep_ms),
            };
            std::thread::Builder::new()
                .name("csb-cases".into())
                .spawn(move || cases::engine::run(engine, store, case_rx, rt, settings))
                .map_err(|e| HubError::Panicked {
                    task: "case workflow start",
                    reason: e.to_string(),
                })?
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|s| *s).await;
        };

        let mut http_task = tokio::spawn(
            axum::serve(http, http::router(state))
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let (ingest_stop_tx, ingest_stop_rx) = oneshot::channel::<()>();
        let mut ingest_task = tokio::spawn(ingest.run(async move {
            let _ = ingest_stop_rx.await;
        }));

        let mut http_done = None;
        let mut ingest_done = None;
        let mut broker_failed = None;
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown requested"),
            r = &mut http_task => http_done = Some(r),
            r = &mut ingest_task => ingest_done = Some(r),
            // Devices cannot get in: stop (draining what was received) and say why, so the
            // supervisor restarts the hub.
            why = broker.failed() => broker_failed = Some(why),
        }
        let _ = stop_tx.send(true);
        // Open change streams would hold the HTTP drain: end them.
        if let Some(t) = &twin {
            t.close_streams();
        }
        case_feed.changes().feed().close();
        activity.feed().close();

        // Stop HTTP first (no new reads), then MQTT (no new data), then let ingest drain.
        let http_result = match http_done {
            Some(r) => r,
            None => match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, &mut http_task).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        "HTTP requests still open after {HTTP_DRAIN_TIMEOUT:?}; closing"
                    );
                    http_task.abort();
                    Ok(Ok(()))
                }
            },
        };
        broker.stop().await;
        let ingest_result = match ingest_done {
            Some(r) => r,
            None => {
                let _ = ingest_stop_tx.send(());
                match tokio::time::timeout(INGEST_DRAIN_TIMEOUT, &mut ingest_task).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::error!(
                            "ingest did not finish draining in {INGEST_DRAIN_TIMEOUT:?}"
                        );
                        ingest_task.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), fleet_task)
            .await
            .is_err()
        {
            tracing::warn!("fleet task still busy at shutdown");
        }
        if let Some(task) = twin_task {
            if tokio::time::timeout(TWIN_DRAIN_TIMEOUT, task)
                .await
                .is_err()
            {
                tracing::error!("twin did not write its pending history in {TWIN_DRAIN_TIMEOUT:?}");
            }
        }
        let joined = tokio::task::spawn_blocking(move || cases_thread.join());
        match tokio::time::timeout(CASES_DRAIN_TIMEOUT, joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::error!("the case workflow thread panicked"),
            Err(_) => tracing::error!(
                "the case workflow did not finish in {CASES_DRAIN_TIMEOUT:?}; it reads the event log again on the next start"
            ),
        }
        // Ingest flushes on its way out; flush again in case it failed early.
        store.flush().await?;
        tracing::info!("hub stopped");

        let panicked = |task, e: tokio::task::JoinError| HubError::Panicked {
            task,
            reason: e.to_string(),
        };
        ingest_result
            .map_err(|e| panicked("ingest", e))?
            .map_err(HubError::Ingest)?;
        if let Some(why) = broker_failed {
            return Err(HubError::Broker(BrokerError::Failed(why)));
        }
        http_result
            .map_err(|e| panicked("http", e))?
            .map_err(|cause| HubError::Http {
                addr: http_addr,
                cause,
            })?;
        Ok(())
    }
}

/// Rollouts take their models from the warehouse: only `ready` ones.
impl fleet::rollout::ModelSource for fleet::models::Warehouse {
    fn assignable(
        &self,
        name: &str,
        version: &str,
    ) -> Result<csb_wire::model::ModelManifest, String> {
        fleet::models::Warehouse::assignable(self, name, version).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One CONNECT straight to rumqttd's loopback listener, behind the front's back: whether it
    /// answered with an accepting CONNACK, and the connection (kept open by the caller).
    async fn direct(
        backend: SocketAddr,
        login: &rumqttd::protocol::Login,
        id: &str,
    ) -> (bool, tokio::net::TcpStream) {
        let mut s = tokio::net::TcpStream::connect(backend).await.unwrap();
        s.write_all(&ingest::mqtt::packet::client_connect(id, Some(login), 30))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await;
        (matches!(read, Ok(Ok(_))) && ack == [0x20, 2, 0, 0], s)
    }

    /// rumqttd 0.20 admits nobody after a client id its router refused connects again
    /// (bytebeamio/rumqtt #1062: a panic poisons a lock every later CONNECT takes). The front
    /// never lets that happen; here it is done to rumqttd directly, to show the hub notices
    /// when its broker cannot admit clients, says so, and stops with an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_that_admits_no_one_is_reported_and_stops_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let config = HubConfig {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            store_cache_mb: 8,
            mqtt_max_connections: 1,
            mqtt_probe_interval_ms: 200,
            ..HubConfig::default()
        };
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = Hub::start(config, http).await.unwrap();
        let (backend, login) = hub.broker.backend();
        let health_url = format!("http://{}/api/v1/health", hub.http_addr());
        let run = tokio::spawn(hub.run(std::future::pending()));
        let health = || async {
            let r = reqwest::get(&health_url).await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        };
        let (code, body) = health().await;
        assert_eq!(
            (code, &body["mqtt"]["broker"]["state"]),
            (200, &"ok".into())
        );

        // Fill the router (1 device + its spare connections, the hub's two links among them).
        let mut held = Vec::new();
        for i in 0.. {
            let (ok, s) = direct(backend, &login, &format!("filler-{i}")).await;
            if !ok {
                break;
            }
            held.push(s);
            assert!(i < 200, "the router never filled up");
        }
        // The refused id again: rumqttd panics holding the lock.
        let (ok, _s) = direct(backend, &login, &format!("filler-{}", held.len())).await;
        assert!(!ok);
        drop(held.pop());
        let (ok, _s) = direct(backend, &login, "anyone").await;
        assert!(!ok, "rumqttd should now admit nobody");

        // The self-probe notices within a few seconds: health says so, the hub stops with why.
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            let mut seen_unhealthy = false;
            loop {
                if run.is_finished() {
                    return (seen_unhealthy, run.await.unwrap());
                }
                if let Ok(r) = reqwest::get(&health_url).await {
                    if r.status() == 503 {
                        let b: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(b["status"], "degraded");
                        let state = b["mqtt"]["broker"]["state"].as_str().unwrap().to_string();
                        assert!(state == "failing" || state == "failed", "{b:#}");
                        seen_unhealthy = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the hub stops within 20 s");
        let (seen_unhealthy, result) = ended;
        assert!(seen_unhealthy, "health never reported the failing broker");
        let err = result.unwrap_err().to_string();
        assert!(err.contains("admitted no client"), "{err}");
    }
}
