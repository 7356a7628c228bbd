//! A real MQTT client (rumqttc) that behaves like an edge: QoS 1 publishes that return once the
//! broker acknowledged them, optionally a last will, a login, TLS, the device's ack topic and a
//! status it publishes again on every connection. Its event loop runs in the background and
//! reconnects as rumqttc does; dropping the client (or [`Client::cut`]) ends the connection
//! without a DISCONNECT, as a power cut would, so the broker publishes the will.
//!
//! For what a library client hides (CONNACK codes, half-open sockets, cut-short packets) see
//! [`crate::raw_mqtt`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csb_wire::Ack;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use ulid::Ulid;

/// How long a CONNACK, SUBACK or PUBACK may take.
const ANSWER: Duration = Duration::from_secs(10);
/// Payloads up to this size go out and come in (oversized ones must reach the hub, not be
/// refused by the client).
const MAX_PACKET: usize = 1 << 20;

type Hello = (String, Arc<dyn Fn() -> Vec<u8> + Send + Sync>);
type OnPublish = Box<dyn FnMut(&str, &[u8]) + Send>;

/// What a [`Client`] connects with; from [`Client::options`].
pub struct ClientOptions {
    id: String,
    keep_alive_s: u64,
    login: Option<(String, String)>,
    will: Option<(String, Vec<u8>)>,
    tls_ca: Option<Vec<u8>>,
    subscriptions: Vec<String>,
    hello: Option<Hello>,
    on_publish: Option<OnPublish>,
}

impl ClientOptions {
    /// Keepalive in seconds (default 5: the broker notices a silent link within 7.5 s).
    pub fn keep_alive(mut self, secs: u64) -> Self {
        self.keep_alive_s = secs;
        self
    }

    /// Username and password (a device's `SITE/DEVICE` and secret).
    pub fn login(mut self, user: &str, password: &str) -> Self {
        self.login = Some((user.into(), password.into()));
        self
    }

    /// A last will, QoS 1, not retained (as the edge agent sets it: its offline status).
    pub fn will(mut self, topic: &str, payload: Vec<u8>) -> Self {
        self.will = Some((topic.into(), payload));
        self
    }

    /// MQTT over TLS, trusting the CA (or self-signed certificate) in `ca_pem`.
    pub fn tls(mut self, ca_pem: &str) -> Self {
        self.tls_ca = Some(ca_pem.as_bytes().to_vec());
        self
    }

    /// Subscribes to `filter` (QoS 1) once connected, before [`ClientOptions::connect`] returns.
    /// What arrives on a topic ending in `/ack` is read as an [`Ack`] (see
    /// [`Client::acks_covering`]); anything else goes to [`ClientOptions::on_publish`].
    pub fn subscribe(mut self, filter: &str) -> Self {
        self.subscriptions.push(filter.into());
        self
    }

    /// Publishes `payload()` on `topic` (QoS 1) on every CONNACK, as the agent announces its
    /// status on each connection (a clean session drops what was in flight on a dead link).
    pub fn hello(
        mut self,
        topic: &str,
        payload: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.hello = Some((topic.into(), Arc::new(payload)));
        self
    }

    /// Called with every publish received that is not an ack.
    pub fn on_publish(mut self, f: impl FnMut(&str, &[u8]) + Send + 'static) -> Self {
        self.on_publish = Some(Box::new(f));
        self
    }

    /// Connects; panics unless the broker accepts within 10 s.
    pub async fn connect(self, addr: SocketAddr) -> Client {
        let id = self.id.clone();
        self.try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("MQTT client {id} refused: {e}"))
    }

    /// Connects: the client once the broker accepted, or how the CONNECT was refused (`CONNACK
    /// <code>`) or the connection failed (rumqttc's error, e.g. a TLS one).
    pub async fn try_connect(self, addr: SocketAddr) -> Result<Client, String> {
        let mut opts = MqttOptions::new(&self.id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(self.keep_alive_s));
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some((user, pass)) = &self.login {
            opts.set_credentials(user, pass);
        }
        if let Some((topic, payload)) = &self.will {
            opts.set_last_will(LastWill::new(
                topic,
                payload.clone(),
                QoS::AtLeastOnce,
                false,
            ));
        }
        if let Some(ca) = self.tls_ca {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        let (client, mut el) = AsyncClient::new(opts, 256);
        connack(&mut el).await?;
        let unclaimed = Arc::new(AtomicUsize::new(0));
        if let Some((topic, payload)) = &self.hello {
            hello(&client, topic, payload, &unclaimed);
        }
        let (puback_tx, pubacks) = mpsc::unbounded_channel();
        let (suback_tx, mut subacks) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(event_loop(
            el,
            client.clone(),
            Senders {
                pubacks: puback_tx,
                subacks: suback_tx,
                acks: ack_tx,
            },
            self.hello,
            self.on_publish,
            unclaimed.clone(),
        ));
        for filter in &self.subscriptions {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(ANSWER, subacks.recv())
                .await
                .unwrap_or_else(|_| panic!("SUBACK for {filter} within 10 s"))
                .expect("event loop alive");
        }
        Ok(Client {
            client,
            pubacks: Mutex::new(pubacks),
            unclaimed,
            acks: Mutex::new(acks),
            task,
        })
    }
}

/// Polls until the CONNECT is answered.
async fn connack(el: &mut EventLoop) -> Result<(), String> {
    tokio::time::timeout(ANSWER, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return if a.code == ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("CONNACK {:?}", a.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("CONNECT answered within 10 s")
}

/// Queues the hello status; its PUBACK is nobody's to wait for.
fn hello(
    client: &AsyncClient,
    topic: &str,
    payload: &Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    unclaimed: &AtomicUsize,
) {
    if client
        .try_publish(topic, QoS::AtLeastOnce, false, payload())
        .is_ok()
    {
        unclaimed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Senders {
    pubacks: mpsc::UnboundedSender<()>,
    subacks: mpsc::UnboundedSender<()>,
    acks: mpsc::UnboundedSender<Ack>,
}

async fn event_loop(
    mut el: EventLoop,
    client: AsyncClient,
    tx: Senders,
    hello_on_connack: Option<Hello>,
    mut on_publish: Option<OnPublish>,
    unclaimed: Arc<AtomicUsize>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                let _ = tx.pubacks.send(());
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = tx.subacks.send(());
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some((topic, payload)) = &hello_on_connack {
                    hello(&client, topic, payload, &unclaimed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic.ends_with("/ack") {
                    // What an edge must do with an ack: validate it like any payload.
                    let ack: Ack = csb_wire::decode(&p.payload).expect("hub sends valid acks");
                    let _ = tx.acks.send(ack);
                } else if let Some(f) = &mut on_publish {
                    f(&p.topic, &p.payload);
                } else {
                    panic!("a publish nobody subscribed to: {}", p.topic);
                }
            }
            Ok(_) => {}
            // Reconnects on the next poll, as rumqttc does.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A connected MQTT client; see the module docs.
pub struct Client {
    client: AsyncClient,
    pubacks: Mutex<mpsc::UnboundedReceiver<()>>,
    /// PUBACKs due for publishes nobody waits for (hello statuses).
    unclaimed: Arc<AtomicUsize>,
    acks: Mutex<mpsc::UnboundedReceiver<Ack>>,
    task: JoinHandle<()>,
}

impl Client {
    /// Options for a client with MQTT client id `id`.
    pub fn options(id: &str) -> ClientOptions {
        ClientOptions {
            id: id.into(),
            keep_alive_s: 5,
            login: None,
            will: None,
            tls_ca: None,
            subscriptions: Vec::new(),
            hello: None,
            on_publish: None,
        }
    }

    /// A plain client (no login, no will), connected.
    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        Client::options(id).connect(addr).await
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, false).await;
    }

    /// Publishes retained at QoS 1 (a device status) and waits for the PUBACK.
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, true).await;
    }

    async fn publish_with(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        let mut pubacks = self.pubacks.lock().await;
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
        for _ in 0..1 + self.unclaimed.swap(0, Ordering::SeqCst) {
            tokio::time::timeout(ANSWER, pubacks.recv())
                .await
                .expect("PUBACK within 10 s")
                .expect("event loop alive");
        }
    }

    /// Sends all, then waits for every PUBACK: keeps many messages in flight at once.
    pub async fn publish_burst(&self, messages: Vec<(String, Vec<u8>)>) {
        let mut pubacks = self.pubacks.lock().await;
        let n = messages.len();
        let client = self.client.clone();
        let sender = tokio::spawn(async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        });
        for i in 0..n + self.unclaimed.swap(0, Ordering::SeqCst) {
            tokio::time::timeout(Duration::from_secs(30), pubacks.recv())
                .await
                .unwrap_or_else(|_| panic!("PUBACK {i} of {n} within 30 s"))
                .expect("event loop alive");
        }
        sender.await.unwrap();
    }

    /// Collects acks until they name every id of `want` (or 15 s pass); returns all acks seen.
    pub async fn acks_covering(&self, want: &BTreeSet<Ulid>) -> Vec<Ack> {
        let mut acks = self.acks.lock().await;
        let mut got = Vec::new();
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !want.is_subset(&seen) {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some(ack)) => {
                    seen.extend(ack.ids.iter().copied());
                    got.push(ack);
                }
                _ => panic!(
                    "acks within 15 s: missing {:?}, got {got:?}",
                    want.difference(&seen).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Acks that arrive within `wait` (for checking that nothing else comes).
    pub async fn acks_within(&self, wait: Duration) -> Vec<Ack> {
        let mut acks = self.acks.lock().await;
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(ack)) = tokio::time::timeout_at(deadline, acks.recv()).await {
            got.push(ack);
        }
        got
    }

    /// Ends the connection without a DISCONNECT (a power cut: the broker publishes the will)
    /// and returns once the socket is closed.
    pub async fn cut(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every id named by `acks`, each once.
pub fn acked_ids(acks: &[Ack]) -> BTreeSet<Ulid> {
    acks.iter().flat_map(|a| a.ids.iter().copied()).collect()
}
