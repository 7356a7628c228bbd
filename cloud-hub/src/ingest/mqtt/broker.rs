//! The embedded MQTT broker (rumqttd): its router, its server on a loopback port, and the hub's
//! in-process links. With `front`, `packet` and `probe` the only code that names rumqttd.
//!
//! Layout: rumqttd's router runs on its own thread (`Router::spawn`); its MQTT/TCP server runs on a
//! second thread we own, on a current-thread tokio runtime, listening on a loopback port that
//! only the front (`front`) connects to, with a login made for each start. Devices connect to
//! the front on the public address. We do not use `Broker::start()` because it blocks forever
//! and swallows bind errors into a log line; owning the server thread lets [`Broker::stop`]
//! close the MQTT listener and lets start-up report a taken port.
//!
//! The router thread cannot be stopped (rumqttd has no API for it): it stays parked until the
//! process exits. The binary exits right after `serve` returns; in tests it is one idle thread.
//!
//! The hub reads messages through an in-process link ([`BrokerLink`]) rather than a TCP client.
//! Flow control: the router pushes at most ~200 notifications into the link's buffer, then
//! parks the link until it is woken. [`BrokerLink::release`] does that wake. The ingest loop
//! calls it once it has taken a batch, but holds at most one batch in the store and one being
//! gathered (see `ingest`), so a slow disk slows the broker's delivery instead of growing
//! memory: rumqttd's commit log is bounded (see `SEGMENT_*`). What overflows it is dropped by
//! rumqttd before the hub saw it, hence never acked, and edges resend it.
//!
//! The link also publishes (acks to devices, [`BrokerLink::publish`]): rumqttd routes a local
//! link's publish like any other, and delivers it at each subscriber's QoS (edges subscribe to
//! their ack topic with QoS 1). A second link publishes the last wills the front keeps
//! ([`Wills`]). A self-probe (`probe`) checks through the public address that clients get in.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csb_wire::Channel;
use futures_util::FutureExt;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{LastWill, Login, Packet, Publish};
use rumqttd::{ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server};
use rumqttd::{SegmentConfig, ServerSettings, Strategy};
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::front::{AuthHook, Front, FrontCounters, FrontSettings, FrontTls};
use super::packet;
use super::probe::{self, BrokerHealth, ProbeTarget};
use super::routes::{AckRoutes, Delivery};

/// How long start-up waits for rumqttd's port to answer a CONNECT.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up waits for the router to acknowledge the hub's subscriptions.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-filter in-memory commit log: `SEGMENT_COUNT` segments of at least this many bytes. This is
/// the broker's only buffer when ingest falls behind; the oldest segment is dropped when full.
const SEGMENT_MIN_BYTES: usize = 2 * 1024 * 1024;
const SEGMENT_COUNT: usize = 3;
/// Ack topics get small logs of their own: rumqttd keeps every filter's log in memory up to its
/// cap whether or not it was read, for as long as the hub runs, each entry with ~230 B of
/// bookkeeping. Edges that subscribe to exactly their own ack topic get their acks from the
/// front instead (see `routes`); these logs serve the rest (persistent sessions, subscriptions
/// bundled with others): two segments of 16 KiB hold a batch's worth of large acks (256 ids,
/// ~7.5 KB each). An ack lost to this bound is harmless (the edge resends and is acked again).
const ACK_SEGMENT_BYTES: usize = 16 * 1024;
const ACK_SEGMENT_COUNT: usize = 2;
/// Publishes the router forwards to a link per scheduling round.
const MAX_OUTGOING_PER_ROUND: u64 = 200;
/// Publishes the hub may have queued on its link for the router; beyond this
/// [`BrokerLink::publish`] refuses instead of queueing without bound.
const MAX_QUEUED_PUBLISHES: usize = 4096;
/// Router connections beyond the device limit: the hub's in-process links (ingest, wills, a
/// benchmark's counter), the self-probe, and sessions the front has let go of whose disconnect
/// the router has not processed yet. The router must never refuse a connection (see `front`).
const ROUTER_SPARE_CONNECTIONS: usize = 64;
/// How long a will may take to reach the router.
const WILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Wills waiting for the wills thread; beyond this a will is counted as failed.
const MAX_QUEUED_WILLS: usize = 1024;
/// Largest CONNECT the front reads: a gateway's (id, login, a status as its will) is ~1 KB.
/// Bounds what connections that have not logged in yet can make the hub hold:
/// `mqtt_max_connections` of them at most.
const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// Client id of the in-process link that publishes last wills.
pub const WILLS_LINK_ID: &str = "hub-wills";
/// User name the front logs in to rumqttd with (its password is made per start).
const FRONT_USER: &str = "cloud-hub-front";
/// User name of the self-probe (its password is made per start); not `SITE/DEVICE`, so no
/// device can have it.
const PROBE_USER: &str = "cloud-hub-probe";

/// What the broker needs from the hub config.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    pub max_payload_bytes: usize,
    /// Devices connected at once; the hub's own links do not count.
    pub max_devices: usize,
    pub max_inflight: usize,
    pub connect_timeout_ms: u16,
    /// Checks every CONNECT's user name and password; `None` lets anyone in.
    pub auth: Option<AuthHook>,
    /// MQTT over TLS only on `listen` (see `front`).
    pub tls: Option<BrokerTls>,
    /// How often the self-probe connects through `listen`.
    pub probe_interval: Duration,
    /// Where the front counts connections and refusals.
    pub counters: Arc<FrontCounters>,
}

/// TLS for the MQTT listener: the loaded certificate.
#[derive(Clone)]
pub struct BrokerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The hub's own certificate: the self-probe trusts exactly this one.
    pub leaf: CertificateDer<'static>,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {cause} (is another broker or hub running?)")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("MQTT server on {addr} failed: {reason}")]
    Server { addr: SocketAddr, reason: String },
    #[error("MQTT server on {addr} did not answer an MQTT CONNECT within {timeout:?}: {last}")]
    NotReady {
        addr: SocketAddr,
        timeout: Duration,
        last: String,
    },
    #[error("cannot start MQTT server thread: {0}")]
    Thread(std::io::Error),
    #[error("in-process broker link `{client_id}`: {reason}")]
    Link { client_id: String, reason: String },
    #[error("broker router has gone away (in-process link closed)")]
    LinkClosed,
    #[error("{0}")]
    Failed(String),
}

/// Why [`BrokerLink::publish`] did not hand a message on.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{queued} publishes already wait for the router")]
    Full { queued: usize },
    #[error("the queue of every session it is routed to is full")]
    SessionsFull,
    #[error("the router did not take the publish: {0}")]
    Router(String),
}

/// One publish as the hub received it. Topic bytes are kept raw: MQTT requires UTF-8, but the
/// check is ours to make and count. Both share the broker's buffers (no copy per message).
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// A running broker. Dropping it without [`Broker::stop`] leaves the MQTT server running.
pub struct Broker {
    addr: SocketAddr,
    /// rumqttd's loopback listener, and the login it takes.
    backend: SocketAddr,
    backend_login: Login,
    front: Option<Front>,
    health: Arc<BrokerHealth>,
    probe_stop: watch::Sender<bool>,
    probe: Option<tokio::task::JoinHandle<()>>,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The hub's in-process client of the router.
pub struct BrokerLink {
    client_id: String,
    /// Sessions the front delivers acks to itself.
    routes: Arc<AckRoutes>,
    /// Publishes (acks); also keeps the link registered.
    tx: LinkTx,
    rx: LinkRx,
    /// The router parked us (buffer full); it must be woken after the batch is handled.
    needs_wake: bool,
}

/// Publishes last wills for the front, through an in-process link of their own, on a thread of
/// their own: handing a publish to rumqttd's router can block while its queue is full.
#[derive(Clone)]
pub struct Wills {
    tx: std::sync::mpsc::SyncSender<(LastWill, oneshot::Sender<bool>)>,
}

impl Wills {
    fn spawn(mut tx: LinkTx, mut rx: LinkRx) -> Result<Wills, BrokerError> {
        let (wills_tx, wills_rx) =
            std::sync::mpsc::sync_channel::<(LastWill, oneshot::Sender<bool>)>(MAX_QUEUED_WILLS);
        std::thread::Builder::new()
            .name("mqtt-wills".into())
            .spawn(move || {
                // Ends when the front (every sender) is gone.
                while let Ok((will, done)) = wills_rx.recv() {
                    // At QoS 0 into the router, which delivers at each subscriber's QoS (as for
                    // acks); retained as the client asked.
                    let publish = Publish::new(will.topic, will.message, will.retain);
                    // `send` never awaits: it pushes and signals the router (blocking while the
                    // router's queue is full).
                    let sent = tx.send(Packet::Publish(publish, None)).now_or_never();
                    let _ = done.send(matches!(sent, Some(Ok(_))));
                    // Nothing comes back for QoS 0 publishes; drain defensively.
                    while let Ok(Some(_)) = rx.recv_deadline(Instant::now()) {}
                }
            })
            .map_err(BrokerError::Thread)?;
        Ok(Wills { tx: wills_tx })
    }

    /// Hands `will` to the router; false if that did not happen in time.
    pub async fn publish(&self, will: LastWill) -> bool {
        let (done, rx) = oneshot::channel();
        if self.tx.try_send((will, done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(WILL_TIMEOUT, rx).await, Ok(Ok(true)))
    }
}

fn link_err(client_id: &str, reason: String) -> BrokerError {
    BrokerError::Link {
        client_id: client_id.to_string(),
        reason,
    }
}

impl Broker {
    /// Starts the router and MQTT server, subscribes `link_id` to `filters` (waiting for the
    /// router's acknowledgements, so nothing published after start-up can be missed), starts
    /// the front on `settings.listen`, and returns once a real client was admitted through it.
    pub async fn start(
        settings: &BrokerSettings,
        link_id: &str,
        filters: &[String],
    ) -> Result<(Broker, BrokerLink), BrokerError> {
        let bind_err = |addr| move |cause| BrokerError::Bind { addr, cause };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(bind_err(settings.listen))?;
        let public = listener.local_addr().map_err(bind_err(settings.listen))?;
        // rumqttd binds inside its server task and only logs a failure: give it a loopback port
        // that was free a moment ago (another process taking it first makes start-up fail with
        // a clear error, not listen elsewhere).
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let addr = std::net::TcpListener::bind(loopback)
            .and_then(|l| l.local_addr())
            .map_err(bind_err(loopback))?;

        let router = Router::new(0, router_config(settings));
        let router_tx = router.spawn();

        let (mut tx, mut rx, _connack) = LinkBuilder::new(link_id, router_tx.clone())
            .build()
            .map_err(|e| link_err(link_id, e.to_string()))?;
        for f in filters {
            tx.subscribe(f.clone())
                .map_err(|e| link_err(link_id, format!("subscribe {f}: {e}")))?;
        }
        // A fresh local link's only acks now are the SubAcks (its ConnAck was consumed by build).
        // rumqttd's `Ack` type is not nameable from outside, so count them.
        let mut acks = 0;
        let deadline = tokio::time::Instant::now() + SUBACK_TIMEOUT;
        while acks < filters.len() {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => {
                    return Err(link_err(
                        link_id,
                        format!(
                        "router acknowledged {acks} of {} subscriptions within {SUBACK_TIMEOUT:?}",
                        filters.len()
                    ),
                    ))
                }
                Ok(Err(e)) => return Err(link_err(link_id, e.to_string())),
                Ok(Ok(Some(Notification::DeviceAck(_)))) => acks += 1,
                Ok(Ok(_)) => {}
            }
        }
        let (wills_tx, wills_rx, _) = LinkBuilder::new(WILLS_LINK_ID, router_tx.clone())
            .build()
            .map_err(|e| link_err(WILLS_LINK_ID, e.to_string()))?;
        let wills = Wills::spawn(wills_tx, wills_rx)?;

        // rumqttd admits only the front; the probe logs in to the front. Secrets of this start.
        let secret =
            |who| crate::ingest::devices::new_secret().map_err(|e| link_err(who, e.to_string()));
        let backend_login = Login {
            username: FRONT_USER.into(),
            password: secret(FRONT_USER)?,
        };
        let probe_login = Login {
            username: PROBE_USER.into(),
            password: secret(PROBE_USER)?,
        };
        let mut server = Server::new(
            server_settings(settings, addr, backend_login.clone()),
            router_tx,
            V4,
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (exit_tx, mut exit_rx) = oneshot::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("mqtt-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = exit_tx.send(format!("cannot build runtime: {e}"));
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        r = server.start(LinkType::Remote) => {
                            let reason = match r {
                                Ok(()) => "server stopped".to_string(),
                                Err(e) => e.to_string(),
                            };
                            tracing::error!(%addr, %reason, "MQTT server exited");
                            let _ = exit_tx.send(reason);
                        }
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here closes the listener and every client connection.
            })
            .map_err(BrokerError::Thread)?;

        let health = Arc::new(BrokerHealth::default());
        let (probe_stop, probe_stop_rx) = watch::channel(false);
        let mut broker = Broker {
            addr: public,
            backend: addr,
            backend_login: backend_login.clone(),
            front: None,
            health: health.clone(),
            probe_stop,
            probe: None,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        };
        if let Err(e) = wait_ready(addr, &mut exit_rx, &backend_login).await {
            broker.stop().await;
            return Err(e);
        }
        // Sessions rumqttd accepts inherit TCP_NODELAY from its listener: its PUBACKs and acks
        // then leave at once instead of waiting for the front's delayed ACK (~40 ms).
        if !set_listener_nodelay(addr) {
            tracing::warn!(%addr, "cannot set TCP_NODELAY on the broker's listener; \
                acks may wait up to 40 ms (Nagle)");
        }
        let front_settings = FrontSettings {
            backend: addr,
            backend_login,
            probe_login: probe_login.clone(),
            tls: settings.tls.as_ref().map(|t| FrontTls {
                acceptor: t.acceptor.clone(),
                handshake_timeout: t.handshake_timeout,
            }),
            max_devices: settings.max_devices,
            max_pending: settings.max_devices.max(64),
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms.into()),
            max_connect_bytes: MAX_CONNECT_BYTES.min(settings.max_payload_bytes),
            max_packet_bytes: settings.max_payload_bytes,
            auth: settings.auth.clone(),
            reserved_ids: vec![link_id.to_string(), WILLS_LINK_ID.to_string()],
        };
        let routes = Arc::new(AckRoutes::new(settings.counters.clone()));
        match Front::start(
            listener,
            front_settings,
            settings.counters.clone(),
            wills,
            health.clone(),
            routes.clone(),
        ) {
            Ok(f) => broker.front = Some(f),
            Err(cause) => {
                broker.stop().await;
                return Err(BrokerError::Bind {
                    addr: public,
                    cause,
                });
            }
        }
        let mut target = ProbeTarget::new(public, probe_login);
        if let Some(t) = &settings.tls {
            target = target.with_tls(t.leaf.clone());
        }
        if let Err(last) = probe::first(&health, &target).await {
            broker.stop().await;
            return Err(BrokerError::NotReady {
                addr: public,
                timeout: probe::PROBE_TIMEOUT,
                last,
            });
        }
        broker.probe = Some(tokio::spawn(probe::run(
            health,
            target,
            settings.probe_interval,
            exit_rx,
            probe_stop_rx,
        )));
        tracing::info!(mqtt = %public, broker = %addr, tls = settings.tls.is_some(),
            max_devices = settings.max_devices, "MQTT listening");
        let link = BrokerLink {
            client_id: link_id.to_string(),
            routes,
            tx,
            rx,
            needs_wake: false,
        };
        Ok((broker, link))
    }

    /// Where devices connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-probe's view, for health.
    pub fn health(&self) -> Arc<BrokerHealth> {
        self.health.clone()
    }

    /// Resolves when the broker is declared failed (see `probe`), with why.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let health = self.health.clone();
        async move { health.failed().await }
    }

    /// rumqttd's own loopback listener and the login it takes: only for benchmarks and tests
    /// that measure or break rumqttd behind the front's back.
    pub(crate) fn backend(&self) -> (SocketAddr, Login) {
        (self.backend, self.backend_login.clone())
    }

    /// Closes the MQTT listener and all client connections. The router thread stays (see the
    /// module docs).
    pub async fn stop(&mut self) {
        let _ = self.probe_stop.send(true);
        if let Some(p) = self.probe.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
        }
        if let Some(front) = self.front.as_mut() {
            front.stop().await;
        }
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(Duration::from_secs(5), joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::warn!(addr = %self.addr, "MQTT server thread panicked"),
                Err(_) => {
                    tracing::warn!(addr = %self.addr, "MQTT server thread did not stop in 5 s")
                }
            }
        }
    }
}

impl BrokerLink {
    /// Waits for at least one notification, then takes whatever else is already buffered, up to
    /// `max` messages. May return an empty batch (e.g. only a park notice arrived); the caller
    /// must call [`BrokerLink::release`] after handling every batch. Cancel-safe.
    pub async fn recv_batch(&mut self, max: usize) -> Result<Vec<InboundMessage>, BrokerError> {
        let mut batch = Vec::new();
        let first = loop {
            match self.rx.next().await {
                Ok(Some(n)) => break n,
                // A wake-up whose data an earlier drain already took.
                Ok(None) => continue,
                Err(_) => return Err(BrokerError::LinkClosed),
            }
        };
        self.take(first, &mut batch)?;
        while batch.len() < max {
            // A deadline of "now" makes this a non-blocking poll of the link's buffer.
            match self.rx.recv_deadline(Instant::now()) {
                Ok(Some(n)) => self.take(n, &mut batch)?,
                Ok(None) => continue,
                // Timeout (nothing buffered) or a closed router: the next await reports the latter.
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Like [`BrokerLink::recv_batch`] but never waits: used to drain on shutdown.
    pub fn try_recv_batch(&mut self, max: usize) -> Result<Vec<InboundMessage>, BrokerError> {
        let mut batch = Vec::new();
        let mut empty_wakeups = 0;
        while batch.len() < max && empty_wakeups < 1000 {
            match self.rx.recv_deadline(Instant::now()) {
                Ok(Some(n)) => self.take(n, &mut batch)?,
                Ok(None) => empty_wakeups += 1,
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Publishes `payload` on `topic` at QoS 0: to the sessions the front routes the topic to
    /// (see `routes`), and into the in-process router when none takes it or someone subscribed
    /// through rumqttd to a filter it could match. Never waits: when the sessions' queues, the
    /// router's queue, or our own queue (`MAX_QUEUED_PUBLISHES`) are full, it fails and the
    /// caller counts it. After a `Router` error the message may still sit in the link's queue
    /// and go out with the next publish (rumqttd keeps it there); callers must treat both
    /// outcomes as possible, which acks do: they are safe to lose and to repeat.
    pub fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        match self.routes.deliver(&topic, &payload) {
            Delivery::NoRoute => self.publish_router(topic, payload),
            Delivery::Queued { sessions, dropped } => {
                if self.routes.observed() {
                    self.publish_router(topic, payload)?;
                }
                if dropped == sessions {
                    return Err(PublishError::SessionsFull);
                }
                Ok(())
            }
        }
    }

    fn publish_router(&mut self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        let queued = self.tx.buffer().len();
        if queued >= MAX_QUEUED_PUBLISHES {
            return Err(PublishError::Full { queued });
        }
        self.tx
            .try_publish(topic, payload)
            .map(|_| ())
            .map_err(|e| PublishError::Router(e.to_string()))
    }

    /// Lets the router deliver more. Call once the previous batch is durably stored.
    pub async fn release(&mut self) -> Result<(), BrokerError> {
        if std::mem::take(&mut self.needs_wake) {
            self.rx.wake().await.map_err(|_| BrokerError::LinkClosed)?;
        }
        Ok(())
    }

    fn take(
        &mut self,
        n: Notification,
        batch: &mut Vec<InboundMessage>,
    ) -> Result<(), BrokerError> {
        match n {
            Notification::Forward(f) => batch.push(InboundMessage {
                topic: f.publish.topic,
                payload: f.publish.payload,
            }),
            Notification::Unschedule => self.needs_wake = true,
            Notification::Disconnect(..) => {
                return Err(BrokerError::Link {
                    client_id: self.client_id.clone(),
                    reason: "router disconnected the link".into(),
                })
            }
            // Acks and replication notices carry nothing for the hub.
            _ => {}
        }
        Ok(())
    }
}

fn router_config(s: &BrokerSettings) -> RouterConfig {
    RouterConfig {
        max_connections: s.max_devices + ROUTER_SPARE_CONNECTIONS,
        max_outgoing_packet_count: MAX_OUTGOING_PER_ROUND,
        // A segment must hold at least one maximal publish.
        max_segment_size: SEGMENT_MIN_BYTES.max(2 * s.max_payload_bytes),
        max_segment_count: SEGMENT_COUNT,
        custom_segment: Some(HashMap::from([(
            Channel::Ack.filter_all(),
            SegmentConfig {
                max_segment_size: ACK_SEGMENT_BYTES,
                max_segment_count: ACK_SEGMENT_COUNT,
            },
        )])),
        initialized_filters: None,
        shared_subscriptions_strategy: Strategy::default(),
    }
}

/// rumqttd's own listener: loopback only, and only the front's login gets in (a local process
/// cannot go around the front's admission).
fn server_settings(s: &BrokerSettings, listen: SocketAddr, front: Login) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: s.connect_timeout_ms,
        max_payload_size: s.max_payload_bytes,
        max_inflight_count: s.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    connections.set_auth_handler(move |_client_id: String, user: String, pass: String| {
        let ok = user == front.username
            && crate::ingest::devices::ct_eq(front.password.as_bytes(), pass.as_bytes());
        std::future::ready(ok)
    });
    ServerSettings {
        name: "csb-mqtt-v4".into(),
        listen,
        // TLS is the front's: rumqttd's handshakes block its accept loop without a timeout.
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

/// Polls until rumqttd's port answers a real MQTT CONNECT with a CONNACK, the server thread
/// reports failure, or the deadline passes. A bare TCP connect would also succeed against some
/// other program holding the port.
async fn wait_ready(
    addr: SocketAddr,
    exit_rx: &mut oneshot::Receiver<String>,
    login: &Login,
) -> Result<(), BrokerError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last: String;
    loop {
        if let Ok(reason) = exit_rx.try_recv() {
            return Err(BrokerError::Server { addr, reason });
        }
        let login = login.clone();
        let attempt = tokio::task::spawn_blocking(move || mqtt_handshake(addr, &login)).await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                timeout: READY_TIMEOUT,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One MQTT 3.1.1 CONNECT / CONNACK exchange with short timeouts.
fn mqtt_handshake(addr: SocketAddr, login: &Login) -> Result<(), String> {
    const IO_TIMEOUT: Duration = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let client_id = format!(
        "{}ready-{}",
        super::front::INTERNAL_ID_PREFIX,
        ulid::Ulid::new()
    );
    s.write_all(&packet::client_connect(&client_id, Some(login), 10))
        .map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).map_err(|e| e.to_string())?;
    if connack[..2] != packet::CONNACK_HEADER || connack[3] != 0 {
        return Err(format!("unexpected CONNACK bytes {connack:02x?}"));
    }
    // Just close: rumqttd 0.20 logs an ERROR ("no-connection id N is already gone") when a
    // DISCONNECT packet is followed by the socket closing, which is noise for a probe.
    drop(s);
    Ok(())
}

/// Sets TCP_NODELAY on rumqttd's listening socket at `addr` (found among this process's open
/// descriptors: rumqttd binds it itself and does not set the option, and Linux hands a
/// listener's TCP_NODELAY down to the sockets it accepts). False when it was not found.
#[cfg(target_os = "linux")]
fn set_listener_nodelay(addr: SocketAddr) -> bool {
    let SocketAddr::V4(want) = addr else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: getsockname/getsockopt/setsockopt only read or write the buffers given, with
        // their sizes; on a descriptor that is not a socket (or was closed meanwhile) they fail.
        unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) != 0
                || i32::from(sa.sin_family) != libc::AF_INET
                || u16::from_be(sa.sin_port) != want.port()
                || u32::from_be(sa.sin_addr.s_addr) != u32::from(*want.ip())
            {
                continue;
            }
            let mut listening: libc::c_int = 0;
            let mut olen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                &mut listening as *mut _ as *mut libc::c_void,
                &mut olen,
            ) != 0
                || listening == 0
            {
                continue;
            }
            let one: libc::c_int = 1;
            return libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0;
        }
    }
    false
}

#[cfg(not(target_os = "linux"))]
fn set_listener_nodelay(_addr: SocketAddr) -> bool {
    false
}
