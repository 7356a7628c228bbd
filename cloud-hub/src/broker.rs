//! The embedded MQTT broker (rumqttd), kept behind this module so nothing else names rumqttd.
//!
//! Layout: rumqttd's router runs on its own thread (`Router::spawn`); its MQTT/TCP server runs on a
//! second thread we own, on a current-thread tokio runtime. We do not use `Broker::start()`
//! because it blocks forever and swallows bind errors into a log line; owning the server thread
//! lets [`Broker::stop`] close the MQTT listener and lets start-up report a taken port.
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
//! their ack topic with QoS 1).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csb_wire::Channel;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server};
use rumqttd::{SegmentConfig, ServerSettings, Strategy};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::tls::{TlsCounters, TlsError, TlsFront};

/// How long start-up waits for the MQTT port to answer a CONNECT.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up waits for the router to acknowledge the hub's subscriptions.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-filter in-memory commit log: `SEGMENT_COUNT` segments of at least this many bytes. This is
/// the broker's only buffer when ingest falls behind; the oldest segment is dropped when full.
const SEGMENT_MIN_BYTES: usize = 4 * 1024 * 1024;
const SEGMENT_COUNT: usize = 4;
/// Ack topics get small logs of their own: rumqttd keeps every filter's log in memory up to its
/// cap whether or not it was read, and each edge subscribes to its own ack topic, so the default
/// cap would cost `SEGMENT_COUNT` × 4 MiB per device. An ack is at most ~7.5 KB; one lost to
/// this bound is harmless (the edge resends and is acked again).
const ACK_SEGMENT_BYTES: usize = 256 * 1024;
const ACK_SEGMENT_COUNT: usize = 2;
/// Publishes the router forwards to a link per scheduling round.
const MAX_OUTGOING_PER_ROUND: u64 = 200;
/// Publishes the hub may have queued on its link for the router; beyond this
/// [`BrokerLink::publish`] refuses instead of queueing without bound.
const MAX_QUEUED_PUBLISHES: usize = 4096;

/// What the broker needs from the hub config.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    pub max_inflight: usize,
    pub connect_timeout_ms: u16,
    /// Checks every CONNECT's user name and password; `None` lets anyone in.
    pub auth: Option<AuthHook>,
    /// MQTT over TLS only on `listen` (see `tls`); rumqttd then listens on a loopback port.
    pub tls: Option<BrokerTls>,
}

/// TLS for the MQTT listener: the loaded certificate and where refusals are counted.
#[derive(Clone)]
pub struct BrokerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
    pub counters: Arc<TlsCounters>,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Decides whether `(client_id, username, password)` may connect. Called on rumqttd's server
/// thread for every CONNECT that carries a login: keep it quick and non-blocking. (rumqttd
/// refuses a CONNECT without any login itself, before the hook runs.)
#[derive(Clone)]
pub struct AuthHook(pub Arc<AuthFn>);

/// `(client_id, username, password) -> allowed`.
pub type AuthFn = dyn Fn(&str, &str, &str) -> bool + Send + Sync;

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthHook")
    }
}

/// User name of the start-up probe (see [`wait_ready`]); not a `SITE/DEVICE`, so no device can
/// have it.
const PROBE_USER: &str = "cloud-hub-probe";

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
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why [`BrokerLink::publish`] did not hand a message to the router.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{queued} publishes already wait for the router")]
    Full { queued: usize },
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
    /// The TLS front on `addr` when TLS is on; rumqttd itself then listens on loopback.
    tls: Option<TlsFront>,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The hub's in-process client of the router.
pub struct BrokerLink {
    client_id: String,
    /// Publishes (acks); also keeps the link registered.
    tx: LinkTx,
    rx: LinkRx,
    /// The router parked us (buffer full); it must be woken after the batch is handled.
    needs_wake: bool,
}

impl Broker {
    /// Starts the router and MQTT server, subscribes `link_id` to `filters` (waiting for the
    /// router's acknowledgements, so nothing published after start-up can be missed), and
    /// returns once the MQTT port answers a real CONNECT.
    pub async fn start(
        settings: &BrokerSettings,
        link_id: &str,
        filters: &[String],
    ) -> Result<(Broker, BrokerLink), BrokerError> {
        let public = settings.listen;
        // rumqttd binds inside its server task and only logs a failure; check first so a taken
        // port is a clear error. std sets SO_REUSEADDR, so rebinding right after is fine.
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr).map_err(|cause| BrokerError::Bind { addr, cause })
        };
        drop(bind(public)?);
        // With TLS, rumqttd gets a free loopback port that only the TLS front connects to. (The
        // port is free now; another process taking it before rumqttd binds makes start-up fail
        // with a clear error, not listen elsewhere.)
        let addr = match &settings.tls {
            None => public,
            Some(_) => bind(SocketAddr::from(([127, 0, 0, 1], 0)))?
                .local_addr()
                .map_err(|cause| BrokerError::Bind {
                    addr: public,
                    cause,
                })?,
        };

        let router = Router::new(0, router_config(settings));
        let router_tx = router.spawn();

        let link_err = |reason: String| BrokerError::Link {
            client_id: link_id.to_string(),
            reason,
        };
        let (mut tx, mut rx, _connack) = LinkBuilder::new(link_id, router_tx.clone())
            .build()
            .map_err(|e| link_err(e.to_string()))?;
        for f in filters {
            tx.subscribe(f.clone())
                .map_err(|e| link_err(format!("subscribe {f}: {e}")))?;
        }
        // A fresh local link's only acks now are the SubAcks (its ConnAck was consumed by build).
        // rumqttd's `Ack` type is not nameable from outside, so count them.
        let mut acks = 0;
        let deadline = tokio::time::Instant::now() + SUBACK_TIMEOUT;
        while acks < filters.len() {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Err(_) => {
                    return Err(link_err(format!(
                        "router acknowledged {acks} of {} subscriptions within {SUBACK_TIMEOUT:?}",
                        filters.len()
                    )))
                }
                Ok(Err(e)) => return Err(link_err(e.to_string())),
                Ok(Ok(Some(Notification::DeviceAck(_)))) => acks += 1,
                Ok(Ok(_)) => {}
            }
        }

        // With authentication on, the readiness probe logs in with a secret of this start only.
        let probe_login = match &settings.auth {
            Some(_) => Some((
                PROBE_USER.to_string(),
                crate::devices::new_secret().map_err(|e| link_err(e.to_string()))?,
            )),
            None => None,
        };
        let mut server = Server::new(
            server_settings(settings, addr, probe_login.clone()),
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

        let mut broker = Broker {
            addr: public,
            tls: None,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        };
        if let Err(e) = wait_ready(addr, &mut exit_rx, probe_login).await {
            broker.stop().await;
            return Err(e);
        }
        if let Some(tls) = &settings.tls {
            let front = TlsFront::start(
                public,
                addr,
                tls.acceptor.clone(),
                tls.handshake_timeout,
                settings.max_connections,
                tls.counters.clone(),
            )
            .await;
            match front {
                Ok(front) => {
                    broker.addr = front.addr();
                    broker.tls = Some(front);
                }
                Err(e) => {
                    broker.stop().await;
                    return Err(e.into());
                }
            }
        }
        let link = BrokerLink {
            client_id: link_id.to_string(),
            tx,
            rx,
            needs_wake: false,
        };
        Ok((broker, link))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the MQTT listener and all client connections. The router thread stays (see the
    /// module docs).
    pub async fn stop(&mut self) {
        if let Some(front) = self.tls.as_mut() {
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

    /// Publishes `payload` on `topic` (QoS 0 into the in-process router, which delivers at each
    /// subscriber's QoS). Never waits: when the router's queue is full or our own queue holds
    /// `MAX_QUEUED_PUBLISHES`, it fails and the caller counts it. After a `Router` error the
    /// message may still sit in the link's queue and go out with the next publish (rumqttd keeps
    /// it there); callers must treat both outcomes as possible, which acks do: they are safe to
    /// lose and to repeat.
    pub fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
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
        max_connections: s.max_connections,
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

fn server_settings(
    s: &BrokerSettings,
    listen: SocketAddr,
    probe: Option<(String, String)>,
) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: s.connect_timeout_ms,
        max_payload_size: s.max_payload_bytes,
        max_inflight_count: s.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    if let Some(hook) = s.auth.clone() {
        connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let ok = match &probe {
                Some((pu, pp)) if user == *pu => {
                    crate::devices::ct_eq(pp.as_bytes(), pass.as_bytes())
                }
                _ => (hook.0)(&client_id, &user, &pass),
            };
            std::future::ready(ok)
        });
    }
    ServerSettings {
        name: "csb-mqtt-v4".into(),
        listen,
        // TLS is ours (`tls`): rumqttd's handshakes block its accept loop without a timeout.
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

/// Polls until the port answers a real MQTT CONNECT with a CONNACK, the server thread reports
/// failure, or the deadline passes. A bare TCP connect would also succeed against some other
/// program holding the port, and makes rumqttd log an error for the half-open connection.
async fn wait_ready(
    addr: SocketAddr,
    exit_rx: &mut oneshot::Receiver<String>,
    login: Option<(String, String)>,
) -> Result<(), BrokerError> {
    let probe_addr = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last: String;
    loop {
        if let Ok(reason) = exit_rx.try_recv() {
            return Err(BrokerError::Server { addr, reason });
        }
        let login = login.clone();
        let attempt =
            tokio::task::spawn_blocking(move || mqtt_handshake(probe_addr, login.as_ref())).await;
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

/// One MQTT 3.1.1 CONNECT / CONNACK / DISCONNECT exchange with short timeouts.
fn mqtt_handshake(addr: SocketAddr, login: Option<&(String, String)>) -> Result<(), String> {
    const IO_TIMEOUT: Duration = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let client_id = format!("cloud-hub-probe-{}", ulid::Ulid::new());
    let mut var = Vec::with_capacity(32 + client_id.len());
    // Flags: clean session, plus user name and password when logging in.
    let flags = if login.is_some() { 0xC2 } else { 0x02 };
    var.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10]);
    let mut field = |b: &[u8]| {
        var.extend_from_slice(&(b.len() as u16).to_be_bytes());
        var.extend_from_slice(b);
    };
    field(client_id.as_bytes());
    if let Some((user, pass)) = login {
        field(user.as_bytes());
        field(pass.as_bytes());
    }
    let mut packet = vec![0x10];
    // Remaining length: MQTT's variable-length integer (the packet is far below 16 KiB).
    let mut n = var.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            packet.push(byte);
            break;
        }
        packet.push(byte | 0x80);
    }
    packet.extend_from_slice(&var);
    s.write_all(&packet).map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).map_err(|e| e.to_string())?;
    if connack[0] != 0x20 || connack[1] != 2 || connack[3] != 0 {
        return Err(format!("unexpected CONNACK bytes {connack:02x?}"));
    }
    // Just close: rumqttd 0.20 logs an ERROR ("no-connection id N is already gone") when a
    // DISCONNECT packet is followed by the socket closing, which is noise for a probe.
    drop(s);
    Ok(())
}
