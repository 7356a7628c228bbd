//! A raw MQTT 3.1.1 client for tests that need what a library client hides: the CONNACK code
//! itself, a CONNECT cut short or never sent, a connection that goes silent (half-open), a
//! socket dropped without DISCONNECT. Packets are written and read with rumqttc's codec
//! (`rumqttc::mqttbytes::v4`), which is not the one the hub parses with.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, LastWill, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode,
    Unsubscribe,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet the client reads (acks of many ids are a few KB).
const MAX_PACKET: usize = 1 << 20;
/// How long the client waits for any one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A CONNECT's details beyond the client id.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub login: Option<(String, String)>,
    /// `(topic, payload, retain)`, published at QoS 1.
    pub will: Option<(String, Vec<u8>, bool)>,
    pub keep_alive_s: u16,
    /// `false` asks for a persistent session.
    pub clean_session: bool,
}

impl ConnectOptions {
    pub fn new() -> Self {
        ConnectOptions {
            keep_alive_s: 30,
            clean_session: true,
            ..Default::default()
        }
    }

    pub fn login(mut self, user: &str, pass: &str) -> Self {
        self.login = Some((user.into(), pass.into()));
        self
    }

    pub fn will(mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Self {
        self.will = Some((topic.into(), payload, retain));
        self
    }
}

/// The bytes of a CONNECT.
pub fn connect_bytes(client_id: &str, o: &ConnectOptions) -> Vec<u8> {
    let mut c = Connect::new(client_id);
    c.keep_alive = o.keep_alive_s;
    c.clean_session = o.clean_session;
    if let Some((u, p)) = &o.login {
        c.set_login(u, p);
    }
    if let Some((t, p, retain)) = &o.will {
        c.last_will = Some(LastWill::new(t, p.clone(), QoS::AtLeastOnce, *retain));
    }
    encode(Packet::Connect(c))
}

fn encode(p: Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, MAX_PACKET).expect("a test packet encodes");
    b.to_vec()
}

/// How a CONNECT was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// CONNACK with this return code (0 accepted, 1–5 refused).
    Connack(u8),
    /// Closed without a CONNACK.
    Closed,
    /// Nothing within [`ANSWER_TIMEOUT`].
    Silent,
}

pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    next_pkid: u16,
}

impl RawClient {
    /// A TCP connection and nothing else yet.
    pub async fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .await
            .expect("TCP connect to the hub");
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: BytesMut::new(),
            next_pkid: 1,
        }
    }

    /// Connects and returns the client with how the hub answered.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        o: &ConnectOptions,
    ) -> (RawClient, Answer) {
        let mut c = RawClient::tcp(addr).await;
        c.send(&connect_bytes(client_id, o)).await;
        let a = c.answer().await;
        (c, a)
    }

    /// Connects and panics unless accepted.
    pub async fn connected(addr: SocketAddr, client_id: &str, o: &ConnectOptions) -> RawClient {
        let (c, a) = RawClient::connect(addr, client_id, o).await;
        assert_eq!(a, Answer::Connack(0), "CONNECT of {client_id}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // A refused client may already be closed: later reads tell.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads the CONNACK (or its absence).
    pub async fn answer(&mut self) -> Answer {
        match self.next(ANSWER_TIMEOUT).await {
            Ok(Some(Packet::ConnAck(ConnAck { code, .. }))) => Answer::Connack(code_byte(code)),
            Ok(Some(p)) => panic!("expected CONNACK, got {p:?}"),
            Ok(None) => Answer::Closed,
            Err(()) => Answer::Silent,
        }
    }

    /// The next packet: `Ok(None)` when the hub closed the connection, `Err` on timeout.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => return Ok(Some(p)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the hub sent a malformed packet: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK (answering whatever else arrives first: a
    /// QoS 1 publish from the hub is acked and dropped).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        let pkid = self.pkid();
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
        p.pkid = pkid;
        self.send(&encode(Packet::Publish(p))).await;
        loop {
            match self.next(ANSWER_TIMEOUT).await {
                Ok(Some(Packet::PubAck(a))) if a.pkid == pkid => return,
                Ok(Some(Packet::Publish(incoming))) => self.ack(&incoming).await,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the hub closed the connection before PUBACK of {topic}"),
                Err(()) => panic!("no PUBACK for {topic} within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    /// Publishes at QoS 0 (retained when asked): nothing to wait for.
    pub async fn publish_qos0(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut p = Publish::new(topic, QoS::AtMostOnce, payload);
        p.retain = retain;
        self.send(&encode(Packet::Publish(p))).await;
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; its return code (`Ok(QoS)` granted, `Err`
    /// refused).
    pub async fn subscribe(&mut self, filter: &str) -> Result<QoS, ()> {
        let pkid = self.pkid();
        let mut s = Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = pkid;
        self.send(&encode(Packet::Subscribe(s))).await;
        loop {
            match self.next(ANSWER_TIMEOUT).await {
                Ok(Some(Packet::SubAck(a))) if a.pkid == pkid => {
                    return match a.return_codes.first() {
                        Some(SubscribeReasonCode::Success(q)) => Ok(*q),
                        _ => Err(()),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the hub closed the connection before SUBACK of {filter}"),
                Err(()) => panic!("no SUBACK for {filter} within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        let mut u = Unsubscribe::new(filter);
        u.pkid = self.pkid();
        let pkid = u.pkid;
        self.send(&encode(Packet::Unsubscribe(u))).await;
        loop {
            match self.next(ANSWER_TIMEOUT).await {
                Ok(Some(Packet::UnsubAck(a))) if a.pkid == pkid => return,
                Ok(Some(Packet::Publish(p))) => self.ack(&p).await,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the hub closed the connection before UNSUBACK of {filter}"),
                Err(()) => panic!("no UNSUBACK for {filter} within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    /// Publishes received on `topic` within `wait` (other topics are acked and skipped).
    pub async fn received_within(&mut self, topic: &str, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(Some(Packet::Publish(p))) => {
                    self.ack(&p).await;
                    if p.topic == topic {
                        got.push(p.payload.to_vec());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(()) => return got,
            }
        }
    }

    /// Waits for a publish on `topic` (acking QoS 1 ones) and returns its payload.
    pub async fn receive(&mut self, topic: &str) -> Vec<u8> {
        loop {
            match self.next(ANSWER_TIMEOUT).await {
                Ok(Some(Packet::Publish(p))) => {
                    self.ack(&p).await;
                    if p.topic == topic {
                        return p.payload.to_vec();
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the hub closed the connection while waiting on {topic}"),
                Err(()) => panic!("nothing on {topic} within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    async fn ack(&mut self, p: &Publish) {
        if p.qos == QoS::AtLeastOnce {
            self.send(&encode(Packet::PubAck(PubAck::new(p.pkid))))
                .await;
        }
    }

    /// Says DISCONNECT and closes: a clean end, no will.
    pub async fn disconnect(mut self) {
        self.send(&encode(Packet::Disconnect)).await;
        let _ = self.stream.shutdown().await;
        // Wait for the hub to close its side, so what follows sees the session gone.
        let _ = self.closed_within(ANSWER_TIMEOUT).await;
    }

    /// Whether the hub closes the connection within `timeout` (anything it sends first is
    /// read and dropped).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        let p = self.next_pkid;
        self.next_pkid = if p == u16::MAX { 1 } else { p + 1 };
        p
    }
}

fn code_byte(c: ConnectReturnCode) -> u8 {
    match c {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::RefusedProtocolVersion => 1,
        ConnectReturnCode::BadClientId => 2,
        ConnectReturnCode::ServiceUnavailable => 3,
        ConnectReturnCode::BadUserNamePassword => 4,
        ConnectReturnCode::NotAuthorized => 5,
    }
}
