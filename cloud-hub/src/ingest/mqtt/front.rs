//! The MQTT front: the hub's public MQTT listener, plain TCP or TLS, in front of rumqttd.
//!
//! Every device connection ends here first. The front reads the client's CONNECT itself and
//! decides, answering refusals with a proper CONNACK (3.1.1 return codes) before rumqttd ever sees
//! the client: a full hub (3), a wrong or missing login (4), an unknown device (5), a client id
//! that is not allowed or belongs to another device (2), another protocol version (1).
//! rumqttd 0.20 has refusal paths that leave a stale entry behind and make every later CONNECT
//! panic (bytebeamio/rumqtt #1062), so no refusal may happen inside it: what the front forwards
//! it has already admitted, with a valid client id, within capacity, logged in with the front's
//! own credentials (rumqttd on its loopback port admits nobody else).
//!
//! Admitted connections are spliced to rumqttd's loopback listener, TCP_NODELAY on both legs.
//! The front also owns what rumqttd gets wrong around a client's session:
//! - **Capacity** counts devices: `max_devices` permits, one per live session; the hub's own
//!   in-process links and the self-probe do not take one.
//! - **Duplicate client ids**: a newcomer with the id of a live session takes over (MQTT 3.1.1,
//!   3.1.4-2): the old connection is closed, rumqttd has let go of it, its will is published, and
//!   only then is the newcomer's CONNECT forwarded, so the old session can never be mistaken for
//!   the new one. With device authentication on, only the same device may take over its id.
//! - **Wills**: rumqttd keys wills by client id, so an old connection ending after a takeover
//!   would publish (and consume) the newcomer's will. The front strips the will from the CONNECT
//!   and publishes it itself through an in-process link when a session ends without DISCONNECT
//!   (a dropped socket, rumqttd closing it for a missed keep-alive, a takeover). A stopping hub
//!   publishes none.
//!
//! Every refusal is counted by reason and logged at most a few lines a minute per reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{LastWill, Login};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::broker::Wills;
use super::packet::{
    self, Boundaries, ConnectError, ConnectRequest, Piece, Refusal, Splitter, Subscription,
};
use super::probe::BrokerHealth;
use super::routes::{could_match_ack, AckRoutes, SESSION_QUEUE};
use crate::support::loglimit::LogLimiter;

/// How long connecting to rumqttd and its CONNACK may take.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long rumqttd gets to close its side of a session the front ended.
const BACKEND_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a newcomer waits for the session it takes over to end (its close and will).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(12);
/// Client ids longer than this are refused (MQTT requires servers to take 23; ours are longer).
pub const MAX_CLIENT_ID_BYTES: usize = 256;
/// Client id prefix of the hub's own clients (the self-probe); refused to anyone else.
pub const INTERNAL_ID_PREFIX: &str = "cloud-hub-";
/// Copy buffers of a session. A quiet gateway (an event a second) reads a few hundred bytes at a
/// time: its buffers are part of its task (client → broker carries events, broker → client
/// PUBACKs and acks), so it holds no heap buffer at all. A read that fills one (a backlog being
/// replayed) switches that direction to a heap buffer of `BURST_BUF` until reads are small
/// again. Every session's memory counts: thousands are open at once.
const QUIET_UP: usize = 2048;
const QUIET_DOWN: usize = 1024;
const BURST_BUF: usize = 16 * 1024;

/// The result of checking a CONNECT's user name and password against the device credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginCheck {
    Accepted,
    /// No device of that name has credentials.
    UnknownDevice,
    /// The device exists and the password is not its secret.
    WrongSecret,
}

/// `(user, password) -> verdict`.
pub type AuthFn = dyn Fn(&str, &str) -> LoginCheck + Send + Sync;

/// Checks `(user, password)`; called on every CONNECT that carries both. Keep it quick.
#[derive(Clone)]
pub struct AuthHook(pub Arc<AuthFn>);

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthHook")
    }
}

/// Why a connection was turned away. Names are stable: metric labels and health JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// `max_devices` sessions are live (CONNACK 3).
    Full,
    /// rumqttd did not take an admitted client (CONNACK 3); the self-probe is woken.
    BrokerUnavailable,
    /// Not MQTT 3.1.1 (CONNACK 1).
    ProtocolVersion,
    /// A client id the hub does not allow: empty without clean session, too long, with `+ # / $`
    /// or control characters, or one of the hub's own (CONNACK 2).
    IdentifierRejected,
    /// With device authentication: the id is live for another device (CONNACK 2).
    IdentifierInUse,
    /// With device authentication: no user name or password (CONNACK 4).
    NoCredentials,
    /// With device authentication: a wrong secret, or a user name that is no device id
    /// (CONNACK 4).
    BadCredentials,
    /// With device authentication: no device of that name has credentials (CONNACK 5).
    UnknownDevice,
    /// No complete CONNECT within the connect timeout (closed).
    ConnectTimeout,
    /// Closed by the client before its CONNECT was complete (closed).
    ClosedBeforeConnect,
    /// The first packet was not a valid CONNECT (closed).
    MalformedConnect,
    /// `max_pending` connections were already waiting for their CONNECT (closed at once).
    TooManyPending,
    /// TLS handshake failed (plain MQTT on the TLS port among them) or timed out (closed).
    TlsHandshake,
}

impl Refused {
    pub const ALL: [Refused; 13] = [
        Refused::Full,
        Refused::BrokerUnavailable,
        Refused::ProtocolVersion,
        Refused::IdentifierRejected,
        Refused::IdentifierInUse,
        Refused::NoCredentials,
        Refused::BadCredentials,
        Refused::UnknownDevice,
        Refused::ConnectTimeout,
        Refused::ClosedBeforeConnect,
        Refused::MalformedConnect,
        Refused::TooManyPending,
        Refused::TlsHandshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::BrokerUnavailable => "broker_unavailable",
            Refused::ProtocolVersion => "protocol_version",
            Refused::IdentifierRejected => "identifier_rejected",
            Refused::IdentifierInUse => "identifier_in_use",
            Refused::NoCredentials => "no_credentials",
            Refused::BadCredentials => "bad_credentials",
            Refused::UnknownDevice => "unknown_device",
            Refused::ConnectTimeout => "connect_timeout",
            Refused::ClosedBeforeConnect => "closed_before_connect",
            Refused::MalformedConnect => "malformed_connect",
            Refused::TooManyPending => "too_many_pending",
            Refused::TlsHandshake => "tls_handshake",
        }
    }

    /// The CONNACK code it is answered with; `None`: the connection is just closed (no CONNECT
    /// to answer, or not one of MQTT 3.1.1).
    pub fn connack(self) -> Option<Refusal> {
        match self {
            Refused::Full | Refused::BrokerUnavailable => Some(Refusal::ServerUnavailable),
            Refused::ProtocolVersion => Some(Refusal::ProtocolVersion),
            Refused::IdentifierRejected | Refused::IdentifierInUse => {
                Some(Refusal::IdentifierRejected)
            }
            Refused::NoCredentials | Refused::BadCredentials => {
                Some(Refusal::BadUserNameOrPassword)
            }
            Refused::UnknownDevice => Some(Refusal::NotAuthorized),
            Refused::ConnectTimeout
            | Refused::ClosedBeforeConnect
            | Refused::MalformedConnect
            | Refused::TooManyPending
            | Refused::TlsHandshake => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The front's counters, shared with the API (`/api/v1/health` `mqtt`, `/metrics`).
#[derive(Debug, Default)]
pub struct FrontCounters {
    /// `max_devices` of the running front (0 before it starts).
    pub max_devices: AtomicU64,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Device sessions admitted (CONNACK 0), takeovers included.
    pub admitted: AtomicU64,
    /// Live device sessions now.
    pub connected: AtomicI64,
    /// Connections waiting for their CONNECT (or TLS handshake) now.
    pub pending: AtomicI64,
    pub refused: [AtomicU64; Refused::ALL.len()],
    /// TLS handshakes that timed out (also in `refused` as `tls_handshake`).
    pub tls_handshakes_timed_out: AtomicU64,
    /// Sessions ended because the same client id connected again.
    pub takeovers: AtomicU64,
    pub wills_published: AtomicU64,
    /// Wills that could not be handed to the router in time.
    pub wills_failed: AtomicU64,
    /// Sessions whose rumqttd side did not close within its timeout.
    pub backend_close_timeouts: AtomicU64,
    /// Acks the front wrote into sessions itself (see `routes`), dropped for a full session
    /// queue, and the sessions it routes acks to now.
    pub acks_routed: AtomicU64,
    pub acks_route_dropped: AtomicU64,
    pub routed_sessions: AtomicI64,
    /// Sessions closed for a packet over `mqtt_max_payload_bytes` (rumqttd would refuse it).
    pub oversized_packets: AtomicU64,
    /// With device authentication: SUBSCRIBE filters refused (SUBACK 0x80) for reaching past
    /// the device's own `ack` and `cmd` topics.
    pub subscriptions_denied: AtomicU64,
}

/// The counters as `/api/v1/health` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FrontSnapshot {
    pub devices_connected: i64,
    pub max_devices: u64,
    pub pending: i64,
    pub accepted: u64,
    pub admitted: u64,
    pub refused: u64,
    pub refused_by_reason: std::collections::BTreeMap<&'static str, u64>,
    pub takeovers: u64,
    pub wills_published: u64,
    pub wills_failed: u64,
    pub backend_close_timeouts: u64,
    pub acks_routed: u64,
    pub acks_route_dropped: u64,
    pub routed_sessions: i64,
    pub oversized_packets: u64,
    pub subscriptions_denied: u64,
}

impl FrontCounters {
    pub fn refused(&self, r: Refused) -> u64 {
        self.refused[r.index()].load(Relaxed)
    }

    pub fn snapshot(&self) -> FrontSnapshot {
        let by_reason: std::collections::BTreeMap<_, _> = Refused::ALL
            .iter()
            .map(|r| (r.as_str(), self.refused(*r)))
            .collect();
        FrontSnapshot {
            devices_connected: self.connected.load(Relaxed),
            max_devices: self.max_devices.load(Relaxed),
            pending: self.pending.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            admitted: self.admitted.load(Relaxed),
            refused: by_reason.values().sum(),
            refused_by_reason: by_reason,
            takeovers: self.takeovers.load(Relaxed),
            wills_published: self.wills_published.load(Relaxed),
            wills_failed: self.wills_failed.load(Relaxed),
            backend_close_timeouts: self.backend_close_timeouts.load(Relaxed),
            acks_routed: self.acks_routed.load(Relaxed),
            acks_route_dropped: self.acks_route_dropped.load(Relaxed),
            routed_sessions: self.routed_sessions.load(Relaxed),
            oversized_packets: self.oversized_packets.load(Relaxed),
            subscriptions_denied: self.subscriptions_denied.load(Relaxed),
        }
    }
}

/// TLS on the public listener: handshakes run in each connection's own task, under a timeout.
#[derive(Clone)]
pub struct FrontTls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

/// What the front needs to know.
#[derive(Clone)]
pub struct FrontSettings {
    /// rumqttd's loopback listener.
    pub backend: SocketAddr,
    /// The login rumqttd accepts (and nobody else knows).
    pub backend_login: Login,
    /// The self-probe's login: admitted without a device permit or session.
    pub probe_login: Login,
    pub tls: Option<FrontTls>,
    pub max_devices: usize,
    pub max_pending: usize,
    pub connect_timeout: Duration,
    /// Largest CONNECT accepted (its will message included).
    pub max_connect_bytes: usize,
    /// Largest packet (remaining length) passed to rumqttd: its own limit, so it never has to
    /// refuse one (the front counts and logs it instead).
    pub max_packet_bytes: usize,
    /// Device credentials; `None` admits any login or none.
    pub auth: Option<AuthHook>,
    /// Client ids of the hub's in-process links, which no client may take over.
    pub reserved_ids: Vec<String>,
}

/// A running front. [`Front::stop`] closes the listener and every session.
pub struct Front {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Front {
    /// Starts accepting on `listener`.
    pub fn start(
        listener: TcpListener,
        settings: FrontSettings,
        counters: Arc<FrontCounters>,
        wills: Wills,
        health: Arc<BrokerHealth>,
        routes: Arc<AckRoutes>,
    ) -> std::io::Result<Front> {
        let addr = listener.local_addr()?;
        counters
            .max_devices
            .store(settings.max_devices as u64, Relaxed);
        let shared = Arc::new(Shared {
            devices: Arc::new(Semaphore::new(settings.max_devices)),
            pending: Arc::new(Semaphore::new(settings.max_pending.max(1))),
            sessions: Mutex::new(HashMap::new()),
            next_gen: AtomicU64::new(1),
            logs: Refused::ALL
                .iter()
                .map(|_| Mutex::new(LogLimiter::new(5, Duration::from_secs(60))))
                .collect(),
            oversized_log: Mutex::new(LogLimiter::new(5, Duration::from_secs(60))),
            denied_log: Mutex::new(LogLimiter::new(5, Duration::from_secs(60))),
            settings,
            counters,
            wills,
            health,
            routes,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared, stop_rx));
        Ok(Front {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection (no wills are published).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!(addr = %self.addr, "MQTT listener did not stop in 5 s");
            }
        }
    }
}

/// A live device session as its slot holds it.
struct Live {
    generation: u64,
    /// The device login that owns the client id (device authentication only).
    user: Option<String>,
    /// Asks the session to end and hand its device permit to whoever sent the request.
    kill: oneshot::Sender<Handoff>,
}

/// Where an ended session sends its device permit on a takeover.
type Handoff = oneshot::Sender<OwnedSemaphorePermit>;

/// One client id's slot: its lock serialises everyone connecting with that id.
type Slot = Arc<tokio::sync::Mutex<Option<Live>>>;

struct Shared {
    settings: FrontSettings,
    counters: Arc<FrontCounters>,
    devices: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    sessions: Mutex<HashMap<String, Slot>>,
    next_gen: AtomicU64,
    logs: Vec<Mutex<LogLimiter>>,
    oversized_log: Mutex<LogLimiter>,
    denied_log: Mutex<LogLimiter>,
    wills: Wills,
    health: Arc<BrokerHealth>,
    routes: Arc<AckRoutes>,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    let mut accept_log = LogLimiter::new(5, Duration::from_secs(60));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(suppressed) = accept_log.allow(Instant::now()) {
                        tracing::warn!(error = %e, suppressed_since_last = suppressed,
                            "MQTT accept failed (too many open files? raise the limit)");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        shared.counters.accepted.fetch_add(1, Relaxed);
        let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
            shared.refuse_quietly(Refused::TooManyPending, peer, "");
            continue;
        };
        shared.counters.pending.fetch_add(1, Relaxed);
        conns.spawn(connection(shared.clone(), tcp, peer, pending));
    }
    // Aborts every connection task, closing both sides; no wills.
    conns.shutdown().await;
}

/// A connection until it is refused or its session ends.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: OwnedSemaphorePermit,
) {
    let pending = Pending {
        _permit: pending,
        counters: shared.counters.clone(),
    };
    let _ = tcp.set_nodelay(true);
    match shared.settings.tls.clone() {
        None => client(&shared, tcp, peer, pending).await,
        // Boxed: TLS state is several KB, and every plain session's task would carry its size.
        Some(tls) => Box::pin(tls_connection(&shared, tls, tcp, peer, pending)).await,
    }
}

async fn tls_connection(
    shared: &Arc<Shared>,
    tls: FrontTls,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: Pending,
) {
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => client(shared, s, peer, pending).await,
        Ok(Err(e)) => {
            // Debug only: a port scan or a plain MQTT client would flood the log.
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            shared.count(Refused::TlsHandshake);
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            shared.count(Refused::TlsHandshake);
            shared
                .counters
                .tls_handshakes_timed_out
                .fetch_add(1, Relaxed);
        }
    }
}

/// Holds a pending slot (and the gauge) until the connection is admitted or refused.
struct Pending {
    _permit: OwnedSemaphorePermit,
    counters: Arc<FrontCounters>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.counters.pending.fetch_sub(1, Relaxed);
    }
}

/// What the front decided to let in.
struct Admitted {
    client_id: String,
    clean_session: bool,
    keep_alive: u16,
    will: Option<LastWill>,
    /// The device login (device authentication only).
    user: Option<String>,
    /// The hub's own self-probe: no device permit, no session slot.
    internal: bool,
}

/// Why the CONNECT could not be read.
enum ReadFailure {
    Closed,
    Connect(ConnectError),
}

async fn read_connect<C: AsyncRead + Unpin>(
    client: &mut C,
    buf: &mut BytesMut,
    max: usize,
) -> Result<ConnectRequest, ReadFailure> {
    loop {
        if let Some(r) = packet::read_connect(buf, max).map_err(ReadFailure::Connect)? {
            return Ok(r);
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadFailure::Closed),
            Ok(_) => {}
        }
    }
}

async fn client<C>(shared: &Arc<Shared>, mut client: C, peer: SocketAddr, pending: Pending)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let s = &shared.settings;
    let mut buf = BytesMut::with_capacity(512);
    let request = match tokio::time::timeout(
        s.connect_timeout,
        read_connect(&mut client, &mut buf, s.max_connect_bytes),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Err(_) => {
            return shared
                .refuse(&mut client, Refused::ConnectTimeout, peer, "")
                .await
        }
        Ok(Err(ReadFailure::Closed)) => {
            return shared
                .refuse(&mut client, Refused::ClosedBeforeConnect, peer, "")
                .await
        }
        Ok(Err(ReadFailure::Connect(e))) => {
            let reason = match e {
                ConnectError::Protocol(_) => Refused::ProtocolVersion,
                _ => Refused::MalformedConnect,
            };
            return shared
                .refuse(&mut client, reason, peer, &e.to_string())
                .await;
        }
    };
    let admitted = match shared.admit(request) {
        Ok(a) => a,
        Err((reason, who)) => return shared.refuse(&mut client, reason, peer, &who).await,
    };
    if admitted.internal {
        return internal_session(shared, client, peer, admitted, buf, pending).await;
    }
    device_session(shared, client, peer, admitted, buf, pending).await
}

impl Shared {
    /// The admission rules that need no state: protocol already checked, now client id and
    /// login.
    fn admit(&self, r: ConnectRequest) -> Result<Admitted, (Refused, String)> {
        let s = &self.settings;
        let id_shown = || r.client_id.chars().take(64).collect::<String>();
        // The self-probe: its own secret, checked before anything else.
        if let Some(l) = &r.login {
            if l.username == s.probe_login.username
                && crate::ingest::devices::ct_eq(
                    l.password.as_bytes(),
                    s.probe_login.password.as_bytes(),
                )
                && r.client_id.starts_with(INTERNAL_ID_PREFIX)
            {
                return Ok(Admitted {
                    client_id: r.client_id,
                    clean_session: true,
                    keep_alive: r.keep_alive.max(1),
                    will: None,
                    user: None,
                    internal: true,
                });
            }
        }
        let mut client_id = r.client_id.clone();
        if client_id.is_empty() {
            if !r.clean_session {
                return Err((
                    Refused::IdentifierRejected,
                    "empty client id without clean session".into(),
                ));
            }
            // MQTT 3.1.1, 3.1.3-6: the server assigns one (rumqttd would too, but the front
            // needs the id for its session slot).
            client_id = format!("auto-{}", ulid::Ulid::new());
        }
        if let Some(why) = bad_client_id(&client_id, &s.reserved_ids) {
            return Err((
                Refused::IdentifierRejected,
                format!("{} ({why})", id_shown()),
            ));
        }
        let user = match &s.auth {
            None => None,
            Some(hook) => {
                let Some(login) = r.login.as_ref().filter(|l| !l.username.is_empty()) else {
                    return Err((Refused::NoCredentials, id_shown()));
                };
                let user_shown = login.username.chars().take(130).collect::<String>();
                if login.password.is_empty() {
                    return Err((Refused::NoCredentials, user_shown));
                }
                match (hook.0)(&login.username, &login.password) {
                    LoginCheck::Accepted => Some(login.username.clone()),
                    LoginCheck::UnknownDevice => {
                        return Err((Refused::UnknownDevice, user_shown));
                    }
                    LoginCheck::WrongSecret => return Err((Refused::BadCredentials, user_shown)),
                }
            }
        };
        Ok(Admitted {
            client_id,
            clean_session: r.clean_session,
            // rumqttd refuses keep-alive 0 ("no keep-alive" in MQTT); the longest it takes
            // comes closest.
            keep_alive: if r.keep_alive == 0 {
                u16::MAX
            } else {
                r.keep_alive
            },
            will: r.will,
            user,
            internal: false,
        })
    }

    fn count(&self, reason: Refused) {
        self.counters.refused[reason.index()].fetch_add(1, Relaxed);
    }

    /// Counts and logs (rate-limited) a packet over the broker's limit.
    fn oversized(&self, len: usize, user: Option<&str>) {
        self.counters.oversized_packets.fetch_add(1, Relaxed);
        let allowed = self
            .oversized_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(
                bytes = len,
                limit = self.settings.max_packet_bytes,
                user,
                suppressed_since_last = suppressed,
                "MQTT packet over mqtt_max_payload_bytes: session closed"
            );
        }
    }

    /// Counts and logs (rate-limited per reason) a refusal.
    fn refuse_quietly(&self, reason: Refused, peer: SocketAddr, who: &str) {
        self.count(reason);
        let allowed = self.logs[reason.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if let Some(suppressed) = allowed {
            let code = reason.connack().map(|c| c as u8);
            tracing::warn!(%peer, reason = reason.as_str(), connack = ?code, who,
                suppressed_since_last = suppressed, "MQTT connection refused");
        }
        if reason == Refused::BrokerUnavailable {
            self.health.wake();
        }
    }

    /// Refuses a connection: CONNACK with its code where it has one, then close.
    async fn refuse<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        reason: Refused,
        peer: SocketAddr,
        who: &str,
    ) {
        self.refuse_quietly(reason, peer, who);
        if let Some(code) = reason.connack() {
            // Bounded: a client that does not read must not hold the task.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                client.write_all(&code.connack()).await?;
                client.flush().await?;
                client.shutdown().await
            })
            .await;
        }
    }

    /// The slot of `client_id`, made if there is none.
    fn slot(&self, client_id: &str) -> Slot {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(client_id.to_string()).or_default().clone()
    }

    /// Drops `client_id`'s slot if it is empty (`state` is its locked content) and nobody else
    /// is waiting for it.
    fn forget(&self, client_id: &str, slot: &Slot, state: &Option<Live>) {
        if state.is_some() {
            return;
        }
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: a newcomer clones it under this lock before waiting on it.
        if Arc::strong_count(slot) == 2 {
            map.remove(client_id);
        }
    }

    /// Connects to rumqttd, forwards the admitted CONNECT and returns the stream and rumqttd's
    /// accepting CONNACK. Anything else means rumqttd cannot take clients.
    async fn open_backend(&self, a: &Admitted) -> Result<(TcpStream, [u8; 4]), String> {
        let s = &self.settings;
        let connect = packet::encode_connect(
            &a.client_id,
            a.clean_session,
            a.keep_alive,
            &s.backend_login,
        );
        tokio::time::timeout(BACKEND_TIMEOUT, async {
            let mut b = TcpStream::connect(s.backend)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = b.set_nodelay(true);
            b.write_all(&connect)
                .await
                .map_err(|e| format!("CONNECT: {e}"))?;
            let mut ack = [0u8; 4];
            b.read_exact(&mut ack)
                .await
                .map_err(|e| format!("no CONNACK ({e})"))?;
            if ack[..2] != packet::CONNACK_HEADER || ack[3] != 0 {
                return Err(format!("refused with CONNACK {ack:02x?}"));
            }
            Ok((b, ack))
        })
        .await
        .map_err(|_| format!("no CONNACK within {BACKEND_TIMEOUT:?}"))?
    }
}

/// Why a client id may not be used, if it may not.
fn bad_client_id(id: &str, reserved: &[String]) -> Option<&'static str> {
    if id.len() > MAX_CLIENT_ID_BYTES {
        return Some("longer than 256 bytes");
    }
    // rumqttd's router refuses these silently (and then panics on the retry); MQTT wildcards
    // and the topic separator have no place in an id anyway.
    if id
        .chars()
        .any(|c| matches!(c, '+' | '#' | '/' | '$') || c.is_control())
    {
        return Some("contains + # / $ or a control character");
    }
    if id.starts_with(INTERNAL_ID_PREFIX) || reserved.iter().any(|r| r == id) {
        return Some("reserved for the hub");
    }
    None
}

/// The self-probe's connection: spliced like a device's, but no permit, slot or will.
async fn internal_session<C>(
    shared: &Arc<Shared>,
    mut client: C,
    peer: SocketAddr,
    a: Admitted,
    leftover: BytesMut,
    pending: Pending,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut backend, connack) = match shared.open_backend(&a).await {
        Ok(b) => b,
        Err(e) => {
            return shared
                .refuse(&mut client, Refused::BrokerUnavailable, peer, &e)
                .await
        }
    };
    drop(pending);
    if client.write_all(&connack).await.is_ok() {
        let (_never, mut kill) = oneshot::channel();
        let mut session = Session::new(shared, 0, None, false);
        let end = splice(&mut client, &mut backend, leftover, &mut kill, &mut session).await;
        if !matches!(end.by, EndedBy::Backend) {
            close_backend(shared, &mut backend).await;
        }
    }
}

async fn device_session<C>(
    shared: &Arc<Shared>,
    mut client: C,
    peer: SocketAddr,
    a: Admitted,
    leftover: BytesMut,
    pending: Pending,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let slot = shared.slot(&a.client_id);
    let Ok(mut state) = tokio::time::timeout(TAKEOVER_TIMEOUT, slot.lock()).await else {
        return shared
            .refuse(
                &mut client,
                Refused::BrokerUnavailable,
                peer,
                &format!("{}: earlier connection still closing", a.client_id),
            )
            .await;
    };
    let permit = match state.take() {
        Some(old) if shared.settings.auth.is_some() && old.user != a.user => {
            *state = Some(old);
            drop(state);
            let who = format!("{} (user {:?})", a.client_id, a.user.unwrap_or_default());
            return shared
                .refuse(&mut client, Refused::IdentifierInUse, peer, &who)
                .await;
        }
        Some(old) => {
            shared.counters.takeovers.fetch_add(1, Relaxed);
            tracing::info!(client_id = %a.client_id, %peer,
                "MQTT client id connected again: closing its earlier connection");
            let (tx, rx) = oneshot::channel();
            let handed = match old.kill.send(tx) {
                Ok(()) => tokio::time::timeout(TAKEOVER_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match handed.or_else(|| shared.devices.clone().try_acquire_owned().ok()) {
                Some(p) => p,
                None => {
                    drop(state);
                    return shared
                        .refuse(&mut client, Refused::BrokerUnavailable, peer, &a.client_id)
                        .await;
                }
            }
        }
        None => match shared.devices.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.forget(&a.client_id, &slot, &state);
                drop(state);
                return shared
                    .refuse(&mut client, Refused::Full, peer, &a.client_id)
                    .await;
            }
        },
    };
    let (mut backend, connack) = match shared.open_backend(&a).await {
        Ok(b) => b,
        Err(e) => {
            drop(permit);
            shared.forget(&a.client_id, &slot, &state);
            drop(state);
            return shared
                .refuse(&mut client, Refused::BrokerUnavailable, peer, &e)
                .await;
        }
    };
    let generation = shared.next_gen.fetch_add(1, Relaxed);
    let (kill_tx, mut kill) = oneshot::channel();
    *state = Some(Live {
        generation,
        user: a.user.clone(),
        kill: kill_tx,
    });
    drop(state);
    drop(pending);
    shared.counters.admitted.fetch_add(1, Relaxed);
    shared.counters.connected.fetch_add(1, Relaxed);

    let mut session = Session::new(shared, generation, a.user.clone(), a.clean_session);
    let end = if client.write_all(&connack).await.is_ok() {
        splice(&mut client, &mut backend, leftover, &mut kill, &mut session).await
    } else {
        SpliceEnd {
            by: EndedBy::Client,
            disconnected: false,
        }
    };
    // Acks for this session stop here, before anything else of it ends.
    drop(session);
    shared.counters.connected.fetch_sub(1, Relaxed);
    if !matches!(end.by, EndedBy::Backend) {
        close_backend(shared, &mut backend).await;
    }
    drop(backend);
    // Only after rumqttd has let go of the session: its will can then never race a newcomer.
    if !end.disconnected {
        if let Some(will) = a.will {
            if shared.wills.publish(will).await {
                shared.counters.wills_published.fetch_add(1, Relaxed);
            } else {
                shared.counters.wills_failed.fetch_add(1, Relaxed);
                tracing::warn!(client_id = %a.client_id, "last will not published in time");
            }
        }
    }
    if let EndedBy::Killed(handoff) = end.by {
        drop(client);
        // The newcomer holds the slot and waits for this.
        let _ = handoff.send(permit);
        return;
    }
    // The client's socket closes last: a client that saw it close may reconnect (or another
    // device take the freed place) at once.
    let _client = client;
    tokio::select! {
        // A newcomer took the slot while this session was closing.
        handoff = &mut kill => {
            if let Ok(h) = handoff {
                let _ = h.send(permit);
            }
        }
        mut state = slot.lock() => {
            if state.as_ref().is_some_and(|l| l.generation == generation) {
                *state = None;
            }
            drop(permit);
            shared.forget(&a.client_id, &slot, &state);
        }
    }
}

enum EndedBy {
    /// The client closed, failed or broke the protocol.
    Client,
    /// rumqttd closed its side (keep-alive, protocol error, a stopping server).
    Backend,
    /// The same client id connected again.
    Killed(Handoff),
}

struct SpliceEnd {
    by: EndedBy,
    /// The client sent DISCONNECT: no will.
    disconnected: bool,
}

/// What a session's splice needs besides its sockets: the packets the front writes to the
/// client itself (its own SUBACKs, the acks it routes), and the ack routes it registered.
struct Session<'a> {
    shared: &'a Shared,
    generation: u64,
    /// The device login (device authentication), which owns the ack topic it may route.
    user: Option<String>,
    /// Only clean sessions get routes: a persistent one expects rumqttd to keep its
    /// subscriptions across connections.
    routable: bool,
    inject_tx: mpsc::Sender<Bytes>,
    inject_rx: mpsc::Receiver<Bytes>,
    routed: Vec<String>,
    observing: bool,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, generation: u64, user: Option<String>, clean: bool) -> Self {
        let (inject_tx, inject_rx) = mpsc::channel(SESSION_QUEUE);
        Session {
            shared,
            generation,
            user,
            routable: clean && generation != 0,
            inject_tx,
            inject_rx,
            routed: Vec::new(),
            observing: false,
        }
    }

    /// Whether the front delivers `filter`'s messages itself: the session's own ack topic.
    fn takes_route(&self, filter: &str) -> bool {
        if !self.routable {
            return false;
        }
        match csb_wire::topic::TopicRef::parse(filter) {
            Ok(t) if t.channel == csb_wire::Channel::Ack => match &self.user {
                Some(u) => u.split_once('/') == Some((t.site, t.device)),
                None => true,
            },
            _ => false,
        }
    }

    /// Whether the session may subscribe to `filter`: with device authentication, only its
    /// own device's `ack` and `cmd` topics, exactly (no wildcard: one could match another
    /// device's traffic); without it, anything.
    fn may_subscribe(&self, filter: &str) -> bool {
        let Some(user) = &self.user else {
            return true;
        };
        match csb_wire::topic::TopicRef::parse(filter) {
            Ok(t) => {
                matches!(t.channel, csb_wire::Channel::Ack | csb_wire::Channel::Cmd)
                    && user.split_once('/') == Some((t.site, t.device))
            }
            Err(_) => false,
        }
    }

    /// Refuses every filter of a SUBSCRIBE reaching past the device's own topics (SUBACK 0x80
    /// for each: the packet is answered whole, never half passed on), counted and logged.
    async fn deny(&mut self, pkid: u16, filters: &[(String, u8)]) -> Result<(), EndedBy> {
        let denied: Vec<&str> = filters
            .iter()
            .map(|(f, _)| f.as_str())
            .filter(|f| !self.may_subscribe(f))
            .collect();
        let shared = self.shared;
        shared
            .counters
            .subscriptions_denied
            .fetch_add(denied.len() as u64, Relaxed);
        let allowed = shared
            .denied_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if let Some(suppressed) = allowed {
            let shown: Vec<String> = denied
                .iter()
                .take(4)
                .map(|f| f.chars().take(200).collect())
                .collect();
            tracing::warn!(
                device = self.user.as_deref().unwrap_or(""),
                filters = ?shown,
                suppressed_since_last = suppressed,
                "MQTT subscription refused: a device may subscribe only to its own ack and cmd topics"
            );
        }
        let ack = packet::suback_refused(pkid, filters.len());
        self.inject_tx.send(ack).await.map_err(|_| EndedBy::Client)
    }

    /// A SUBSCRIBE or UNSUBSCRIBE: answered here (with a route or a refusal) or passed to
    /// rumqttd. `Err` when the connection ended meanwhile.
    async fn on_subscription<W: AsyncWrite + Unpin>(
        &mut self,
        packet: Bytes,
        to_backend: &mut W,
    ) -> Result<(), EndedBy> {
        let routes = &self.shared.routes;
        match packet::read_subscription(&packet) {
            Ok(Subscription::Subscribe(pkid, filters))
                if filters.iter().any(|(f, _)| !self.may_subscribe(f)) =>
            {
                return self.deny(pkid, &filters).await;
            }
            Ok(Subscription::Subscribe(pkid, filters))
                if filters.len() == 1 && self.takes_route(&filters[0].0) =>
            {
                let (topic, qos) = &filters[0];
                routes.add(topic, self.generation, self.inject_tx.clone());
                if !self.routed.contains(topic) {
                    self.routed.push(topic.clone());
                }
                let ack = packet::suback(pkid, (*qos).min(1));
                return self.inject_tx.send(ack).await.map_err(|_| EndedBy::Client);
            }
            Ok(Subscription::Unsubscribe(pkid, filters))
                if filters.len() == 1 && self.routed.contains(&filters[0]) =>
            {
                routes.remove(&filters[0], self.generation);
                self.routed.retain(|t| *t != filters[0]);
                let ack = packet::unsuback(pkid);
                return self.inject_tx.send(ack).await.map_err(|_| EndedBy::Client);
            }
            Ok(Subscription::Subscribe(_, filters))
                if !self.observing && filters.iter().any(|(f, _)| could_match_ack(f)) =>
            {
                self.observing = true;
                routes.observer_joined();
            }
            // rumqttd answers (or refuses) the rest as it would have.
            _ => {}
        }
        to_backend
            .write_all(&packet)
            .await
            .map_err(|_| EndedBy::Backend)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        for t in &self.routed {
            self.shared.routes.remove(t, self.generation);
        }
        if self.observing {
            self.shared.routes.observer_left();
        }
    }
}

/// Copies both ways until either side ends (MQTT has no use for half-closed connections, and
/// waiting for a silent client after rumqttd closed would hold its slot forever) or the session
/// is taken over. The client's stream goes through a [`Splitter`] (DISCONNECT, subscriptions);
/// rumqttd's through [`Boundaries`], so the front's own packets go in between whole ones.
async fn splice<C>(
    client: &mut C,
    backend: &mut TcpStream,
    leftover: BytesMut,
    kill: &mut oneshot::Receiver<Handoff>,
    session: &mut Session<'_>,
) -> SpliceEnd
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_backend, mut to_backend) = backend.split();
    let mut splitter = Splitter::with_limit(session.shared.settings.max_packet_bytes);
    let mut disconnected = false;
    let mut inject_rx = std::mem::replace(&mut session.inject_rx, mpsc::channel(1).1);
    let by = {
        let up = async {
            let mut pieces = Vec::new();
            let data = &leftover[..];
            if let Err(end) = forward(
                &mut splitter,
                &mut pieces,
                session,
                &mut to_backend,
                data,
                &mut disconnected,
            )
            .await
            {
                return end;
            }
            drop(leftover);
            let mut quiet = [0u8; QUIET_UP];
            let mut burst = BytesMut::new();
            loop {
                let end = if burst.capacity() > 0 {
                    burst.clear();
                    match from_client.read_buf(&mut burst).await {
                        Ok(0) | Err(_) => return EndedBy::Client,
                        Ok(_) => {}
                    }
                    let end = forward(
                        &mut splitter,
                        &mut pieces,
                        session,
                        &mut to_backend,
                        &burst,
                        &mut disconnected,
                    )
                    .await;
                    if burst.len() < QUIET_UP {
                        burst = BytesMut::new();
                    }
                    end
                } else {
                    let n = match from_client.read(&mut quiet).await {
                        Ok(0) | Err(_) => return EndedBy::Client,
                        Ok(n) => n,
                    };
                    if n == QUIET_UP {
                        burst.reserve(BURST_BUF);
                    }
                    forward(
                        &mut splitter,
                        &mut pieces,
                        session,
                        &mut to_backend,
                        &quiet[..n],
                        &mut disconnected,
                    )
                    .await
                };
                if let Err(end) = end {
                    return end;
                }
            }
        };
        let down = async {
            let mut quiet = [0u8; QUIET_DOWN];
            let mut burst = BytesMut::new();
            let mut bounds = Boundaries::default();
            // The front's own packets waiting for rumqttd to finish the packet it is writing.
            let mut waiting = BytesMut::new();
            loop {
                tokio::select! {
                    r = async {
                        if burst.capacity() > 0 {
                            burst.clear();
                            from_backend.read_buf(&mut burst).await
                        } else {
                            from_backend.read(&mut quiet).await
                        }
                    } => {
                        let n = match r {
                            Ok(0) | Err(_) => return EndedBy::Backend,
                            Ok(n) => n,
                        };
                        let data = if burst.capacity() > 0 { &burst[..] } else { &quiet[..n] };
                        if bounds.feed(data).is_err() {
                            return EndedBy::Backend;
                        }
                        if to_client.write_all(data).await.is_err() {
                            return EndedBy::Client;
                        }
                        if burst.capacity() > 0 && n < QUIET_DOWN {
                            burst = BytesMut::new();
                        } else if burst.capacity() == 0 && n == QUIET_DOWN {
                            burst.reserve(BURST_BUF);
                        }
                    }
                    Some(p) = inject_rx.recv() => {
                        waiting.extend_from_slice(&p);
                        // Whatever else is queued goes out in the same write.
                        while waiting.len() < BURST_BUF {
                            match inject_rx.try_recv() {
                                Ok(p) => waiting.extend_from_slice(&p),
                                Err(_) => break,
                            }
                        }
                    }
                }
                if !waiting.is_empty() && bounds.at_boundary() {
                    if to_client.write_all(&waiting).await.is_err() {
                        return EndedBy::Client;
                    }
                    waiting = BytesMut::new();
                }
            }
        };
        tokio::select! {
            by = up => by,
            by = down => by,
            handoff = &mut *kill => match handoff {
                Ok(h) => EndedBy::Killed(h),
                // The slot dropped the session: cannot happen while it is live; end it.
                Err(_) => EndedBy::Client,
            },
        }
    };
    SpliceEnd { by, disconnected }
}

/// Passes client bytes to rumqttd up to a DISCONNECT (which ends the session: `Err`), handing
/// subscriptions to the session.
async fn forward<W: AsyncWrite + Unpin>(
    splitter: &mut Splitter,
    pieces: &mut Vec<Piece>,
    session: &mut Session<'_>,
    to_backend: &mut W,
    data: &[u8],
    disconnected: &mut bool,
) -> Result<(), EndedBy> {
    // A broken stream is a protocol violation: end it like a dropped client.
    splitter.split(data, pieces).map_err(|_| EndedBy::Client)?;
    for piece in pieces.drain(..) {
        match piece {
            Piece::Pass(r) => to_backend
                .write_all(&data[r])
                .await
                .map_err(|_| EndedBy::Backend)?,
            Piece::Inspect(packet) => session.on_subscription(packet, to_backend).await?,
            Piece::Disconnect => {
                *disconnected = true;
                return Err(EndedBy::Client);
            }
            Piece::Oversized(len) => {
                session.shared.oversized(len, session.user.as_deref());
                // A protocol violation: the session ends as if the client dropped (its will
                // is published), as rumqttd would have ended it.
                return Err(EndedBy::Client);
            }
        }
    }
    Ok(())
}

/// Ends a session on rumqttd's side: FIN, then wait (bounded) until rumqttd closes too, which it
/// does only after handing the disconnect to its router. A newcomer with the same id can then
/// never overtake it.
async fn close_backend(shared: &Shared, backend: &mut TcpStream) {
    let _ = backend.shutdown().await;
    let drained = tokio::time::timeout(BACKEND_CLOSE_TIMEOUT, async {
        let mut b = [0u8; 512];
        while let Ok(n) = backend.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    if drained.is_err() {
        shared.counters.backend_close_timeouts.fetch_add(1, Relaxed);
        tracing::warn!("rumqttd did not close a session within {BACKEND_CLOSE_TIMEOUT:?}");
        shared.health.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_the_router_would_refuse_are_refused_here() {
        let reserved = vec!["hub-ingest".to_string()];
        for ok in ["edge-gw-01", "a", "设备-01", &"x".repeat(256)] {
            assert_eq!(bad_client_id(ok, &reserved), None, "{ok}");
        }
        for bad in [
            "a/b",
            "a+",
            "#",
            "$SYS",
            "tab\there",
            "hub-ingest",
            "cloud-hub-probe-1",
            &"x".repeat(257),
        ] {
            assert!(bad_client_id(bad, &reserved).is_some(), "{bad}");
        }
    }

    #[test]
    fn every_refusal_has_a_distinct_name_and_the_right_code() {
        let names: std::collections::HashSet<_> = Refused::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refused::ALL.len());
        for (i, r) in Refused::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(Refused::Full.connack(), Some(Refusal::ServerUnavailable));
        assert_eq!(
            Refused::UnknownDevice.connack(),
            Some(Refusal::NotAuthorized)
        );
        assert_eq!(
            Refused::BadCredentials.connack(),
            Some(Refusal::BadUserNameOrPassword)
        );
        assert_eq!(Refused::ConnectTimeout.connack(), None);
    }
}
