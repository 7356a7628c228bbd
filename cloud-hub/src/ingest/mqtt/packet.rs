//! The few MQTT 3.1.1 packets the front reads and writes itself: a client's CONNECT (parsed with
//! rumqttd's own v4 codec, so the front accepts exactly what rumqttd would), the CONNECT it
//! forwards to rumqttd, CONNACK refusals, and a framer that follows packet boundaries in a
//! client's byte stream to notice a DISCONNECT without decoding anything else.

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, Error as CodecError, LastWill, Login, Packet, Protocol};
use thiserror::Error;

/// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3) other than 0 (accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 1: the protocol level (or name) is not MQTT 3.1.1.
    ProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the server cannot take the connection now (full, or the broker is failing).
    ServerUnavailable = 3,
    /// 4: the user name or password is missing, malformed or wrong.
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect (no such device).
    NotAuthorized = 5,
}

impl Refusal {
    /// The four bytes of a CONNACK carrying this code (session present 0).
    pub fn connack(self) -> [u8; 4] {
        [0x20, 0x02, 0x00, self as u8]
    }
}

/// The accepting CONNACK rumqttd sends (session present 0 or 1) is passed through as it is;
/// this is its first byte and length.
pub const CONNACK_HEADER: [u8; 2] = [0x20, 0x02];

/// What a client's CONNECT asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// User name and password; `None` when the CONNECT carries neither.
    pub login: Option<Login>,
    pub will: Option<LastWill>,
}

/// Why the bytes before a CONNECT could not be read as one.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConnectError {
    /// Not MQTT 3.1.1: answered with CONNACK 1 (3.1's "MQIsdp" and 5.0 among them).
    #[error("protocol {0} is not MQTT 3.1.1")]
    Protocol(String),
    /// The first packet is not a CONNECT (the connection is closed without an answer).
    #[error("first packet is not a CONNECT (first byte {0:#04x})")]
    NotConnect(u8),
    #[error("CONNECT of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("malformed CONNECT: {0}")]
    Malformed(String),
}

/// Reads one CONNECT from the front of `buf`: `Ok(None)` when more bytes are needed; otherwise
/// the request, with the CONNECT's bytes taken out of `buf` (what follows it stays).
pub fn read_connect(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<ConnectRequest>, ConnectError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // CONNECT's fixed header flags are reserved as 0000.
    if first != 0x10 {
        return Err(ConnectError::NotConnect(first));
    }
    match V4.read_mut(buf, max_bytes) {
        Ok(Packet::Connect(c, _, will, _, login)) => Ok(Some(ConnectRequest {
            client_id: c.client_id,
            clean_session: c.clean_session,
            keep_alive: c.keep_alive,
            login,
            will,
        })),
        // The first byte says CONNECT; nothing else can come out.
        Ok(_) => Err(ConnectError::NotConnect(first)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(CodecError::InvalidProtocolLevel(l)) => {
            Err(ConnectError::Protocol(format!("level {l}")))
        }
        Err(CodecError::InvalidProtocol) => Err(ConnectError::Protocol("name".into())),
        Err(CodecError::PayloadSizeLimitExceeded(n)) => Err(ConnectError::TooLarge(n)),
        Err(e) => Err(ConnectError::Malformed(e.to_string())),
    }
}

/// The CONNECT the front sends rumqttd for an admitted client: its client id, session flag and
/// keep-alive, the front's own login (rumqttd admits nobody else), and no will (the front
/// publishes wills itself, see `front`).
pub fn encode_connect(
    client_id: &str,
    clean_session: bool,
    keep_alive: u16,
    login: &Login,
) -> Bytes {
    let connect = Connect {
        keep_alive,
        client_id: client_id.to_string(),
        clean_session,
    };
    let mut buf = BytesMut::with_capacity(32 + client_id.len() + login.username.len() * 2);
    // Writing a CONNECT into memory fails only for a packet over 256 MiB, which these are not.
    let _ = V4.write(
        Packet::Connect(connect, None, None, None, Some(login.clone())),
        &mut buf,
    );
    buf.freeze()
}

/// A client's CONNECT with a login, as a test or probe client sends it.
pub fn client_connect(client_id: &str, login: Option<&Login>, keep_alive: u16) -> Bytes {
    let connect = Connect {
        keep_alive,
        client_id: client_id.to_string(),
        clean_session: true,
    };
    let mut buf = BytesMut::with_capacity(64);
    let _ = V4.write(
        Packet::Connect(connect, None, None, None, login.cloned()),
        &mut buf,
    );
    buf.freeze()
}

/// A malformed stream: the connection is a protocol violation and is closed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed packet stream")]
pub struct FrameError;

/// Largest SUBSCRIBE or UNSUBSCRIBE the front reads whole (a gateway's is well under 1 KiB).
const MAX_INSPECTED: usize = 64 * 1024;

/// Where a packet's fixed header or body is, while a stream is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The next byte starts a packet.
    Start,
    /// Reading the remaining length: value so far, length bytes read.
    Len { value: usize, count: u32 },
    /// Body bytes still to come.
    Body(usize),
}

impl At {
    /// Advances over one byte that is not a packet's first; errors on a fifth length byte.
    fn len_byte(self, b: u8) -> Result<At, FrameError> {
        let At::Len { value, count } = self else {
            return Ok(self);
        };
        let value = value | (usize::from(b & 0x7f) << (7 * count));
        if b & 0x80 == 0 {
            return Ok(if value == 0 {
                At::Start
            } else {
                At::Body(value)
            });
        }
        if count == 3 {
            return Err(FrameError);
        }
        Ok(At::Len {
            value,
            count: count + 1,
        })
    }
}

/// What the front does with a stretch of a client's stream after its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// These bytes of the chunk go to the broker as they are.
    Pass(std::ops::Range<usize>),
    /// A whole SUBSCRIBE or UNSUBSCRIBE (fixed header included), for the front to decide on.
    Inspect(Bytes),
    /// A DISCONNECT starts here: the session ends without a will; nothing after it counts.
    Disconnect,
    /// A packet whose remaining length (this many bytes) is over the splitter's limit starts
    /// here: nothing of it is passed on, and the session ends as a protocol violation.
    Oversized(usize),
}

/// Follows a client's stream packet by packet, reading only fixed headers, except that
/// SUBSCRIBE and UNSUBSCRIBE are gathered whole (the front answers some itself) and DISCONNECT
/// is reported where it starts (it is not passed on: rumqttd logs a connection closed after
/// DISCONNECT as an error; a plain close is what it expects).
#[derive(Debug)]
pub struct Splitter {
    at: At,
    /// The packet being gathered for inspection, if the current one is.
    gathering: Option<BytesMut>,
    /// Largest remaining length passed on (the broker's packet limit).
    max_packet: usize,
    /// Where the current packet started in the chunk being split, if it did in this one.
    packet_start: Option<usize>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::with_limit(usize::MAX)
    }
}

impl Splitter {
    /// A splitter that reports a packet over `max_packet` bytes (remaining length) as
    /// [`Piece::Oversized`] instead of passing it on.
    pub fn with_limit(max_packet: usize) -> Self {
        Splitter {
            at: At::Start,
            gathering: None,
            max_packet,
            packet_start: None,
        }
    }

    /// Splits `data` into `out` (cleared first). Stops at a DISCONNECT.
    pub fn split(&mut self, data: &[u8], out: &mut Vec<Piece>) -> Result<(), FrameError> {
        out.clear();
        self.packet_start = None;
        let mut pass_from: Option<usize> = None;
        let mut i = 0;
        let flush = |pass_from: &mut Option<usize>, end: usize, out: &mut Vec<Piece>| {
            if let Some(start) = pass_from.take() {
                if end > start {
                    out.push(Piece::Pass(start..end));
                }
            }
        };
        while i < data.len() {
            match (self.at, &mut self.gathering) {
                (At::Start, _) => {
                    let kind = data[i] >> 4;
                    if kind == 14 {
                        flush(&mut pass_from, i, out);
                        out.push(Piece::Disconnect);
                        return Ok(());
                    }
                    self.packet_start = Some(i);
                    if kind == 8 || kind == 10 {
                        flush(&mut pass_from, i, out);
                        let mut g = BytesMut::with_capacity(64);
                        g.extend_from_slice(&data[i..=i]);
                        self.gathering = Some(g);
                    } else if pass_from.is_none() {
                        pass_from = Some(i);
                    }
                    self.at = At::Len { value: 0, count: 0 };
                    i += 1;
                }
                (At::Len { .. }, gathering) => {
                    let b = data[i];
                    match gathering {
                        Some(g) => g.extend_from_slice(&[b]),
                        // A passing packet that began in an earlier chunk.
                        None => {
                            pass_from.get_or_insert(i);
                        }
                    }
                    self.at = self.at.len_byte(b)?;
                    if let At::Body(n) = self.at {
                        if n > self.max_packet {
                            // Nothing of it goes on: cut the pass where the packet began (its
                            // first bytes may have been passed with an earlier chunk already,
                            // which is harmless: the session ends here).
                            let start = self.packet_start.unwrap_or(0);
                            if let Some(from) = pass_from.take() {
                                if start > from {
                                    out.push(Piece::Pass(from..start));
                                }
                            }
                            out.push(Piece::Oversized(n));
                            return Ok(());
                        }
                    }
                    if let (At::Body(n), Some(_)) = (self.at, &self.gathering) {
                        if n > MAX_INSPECTED {
                            return Err(FrameError);
                        }
                    }
                    i += 1;
                }
                (At::Body(left), gathering) => {
                    let n = left.min(data.len() - i);
                    match gathering {
                        Some(g) => g.extend_from_slice(&data[i..i + n]),
                        None => {
                            pass_from.get_or_insert(i);
                        }
                    }
                    i += n;
                    self.at = if n == left {
                        At::Start
                    } else {
                        At::Body(left - n)
                    };
                }
            }
            // A gathered packet is complete once its header says it has no body left.
            if self.at == At::Start {
                if let Some(g) = self.gathering.take() {
                    out.push(Piece::Inspect(g.freeze()));
                }
            }
        }
        flush(&mut pass_from, data.len(), out);
        Ok(())
    }
}

/// Follows packet boundaries in the broker's stream to a client, so the front can put its own
/// packets (SUBACKs, acks) between rumqttd's without cutting one in two.
#[derive(Debug)]
pub struct Boundaries {
    at: At,
}

impl Default for Boundaries {
    fn default() -> Self {
        Boundaries { at: At::Start }
    }
}

impl Boundaries {
    pub fn feed(&mut self, data: &[u8]) -> Result<(), FrameError> {
        let mut i = 0;
        while i < data.len() {
            match self.at {
                At::Start => {
                    self.at = At::Len { value: 0, count: 0 };
                    i += 1;
                }
                At::Len { .. } => {
                    self.at = self.at.len_byte(data[i])?;
                    i += 1;
                }
                At::Body(left) => {
                    let n = left.min(data.len() - i);
                    i += n;
                    self.at = if n == left {
                        At::Start
                    } else {
                        At::Body(left - n)
                    };
                }
            }
        }
        Ok(())
    }

    /// Between two packets: something else may be written now.
    pub fn at_boundary(&self) -> bool {
        self.at == At::Start
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE the front read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Packet id, and each filter with its requested QoS.
    Subscribe(u16, Vec<(String, u8)>),
    Unsubscribe(u16, Vec<String>),
}

/// Reads a gathered SUBSCRIBE or UNSUBSCRIBE (rumqttd's codec: it accepts what rumqttd would).
pub fn read_subscription(packet: &Bytes) -> Result<Subscription, String> {
    let mut b = BytesMut::from(&packet[..]);
    match V4.read_mut(&mut b, MAX_INSPECTED) {
        Ok(Packet::Subscribe(s, _)) => Ok(Subscription::Subscribe(
            s.pkid,
            s.filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        )),
        Ok(Packet::Unsubscribe(u, _)) => Ok(Subscription::Unsubscribe(u.pkid, u.filters)),
        Ok(p) => Err(format!("not a subscription: {p:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// SUBACK granting `qos` to one filter.
pub fn suback(pkid: u16, qos: u8) -> Bytes {
    let [hi, lo] = pkid.to_be_bytes();
    Bytes::copy_from_slice(&[0x90, 3, hi, lo, qos])
}

/// MQTT's variable-length "remaining length": 7 bits a byte, high bit set while more follow.
fn remaining_length(b: &mut BytesMut, mut n: usize) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            b.extend_from_slice(&[byte]);
            return;
        }
        b.extend_from_slice(&[byte | 0x80]);
    }
}

/// SUBACK refusing every one of `n` filters (return code 0x80).
pub fn suback_refused(pkid: u16, n: usize) -> Bytes {
    let [hi, lo] = pkid.to_be_bytes();
    let mut b = BytesMut::with_capacity(n + 8);
    b.extend_from_slice(&[0x90]);
    // The packet id and one code per filter.
    remaining_length(&mut b, 2 + n);
    b.extend_from_slice(&[hi, lo]);
    b.extend(std::iter::repeat_n(0x80u8, n));
    b.freeze()
}

pub fn unsuback(pkid: u16) -> Bytes {
    let [hi, lo] = pkid.to_be_bytes();
    Bytes::copy_from_slice(&[0xb0, 2, hi, lo])
}

/// A QoS 0 PUBLISH of `payload` on `topic`.
pub fn publish_qos0(topic: &str, payload: &[u8]) -> Bytes {
    let body = 2 + topic.len() + payload.len();
    let mut b = BytesMut::with_capacity(body + 5);
    b.extend_from_slice(&[0x30]);
    remaining_length(&mut b, body);
    b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4 as c;

    fn client_bytes(p: c::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).unwrap();
        b
    }

    #[test]
    fn reads_a_connect_written_by_another_codec_and_leaves_what_follows() {
        let mut connect = c::Connect::new("edge-gw-01");
        connect.keep_alive = 30;
        connect.set_login("yuexi/gw-01", "s3cret");
        connect.last_will = Some(c::LastWill::new(
            "csb/v1/yuexi/gw-01/status",
            "offline",
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        let mut buf = client_bytes(c::Packet::Connect(connect));
        let ping = client_bytes(c::Packet::PingReq);
        buf.extend_from_slice(&ping);
        // Fed one byte at a time, it needs more until the whole CONNECT is there.
        let whole = buf.clone();
        let mut partial = BytesMut::new();
        let connect_len = whole.len() - ping.len();
        for &b in &whole[..connect_len - 1] {
            partial.extend_from_slice(&[b]);
            assert_eq!(read_connect(&mut partial, 1024), Ok(None));
        }
        let r = read_connect(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(r.client_id, "edge-gw-01");
        assert_eq!(r.keep_alive, 30);
        assert!(r.clean_session);
        let login = r.login.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("yuexi/gw-01", "s3cret")
        );
        let will = r.will.unwrap();
        assert_eq!(&will.topic[..], b"csb/v1/yuexi/gw-01/status");
        assert_eq!(&will.message[..], b"offline");
        assert!(will.retain);
        assert_eq!(&buf[..], &ping[..], "bytes after the CONNECT stay");
    }

    #[test]
    fn refusable_connects_are_told_apart() {
        // MQTT 5 and 3.1 CONNECTs.
        let mut v5 = BytesMut::from(&[0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 10][..]);
        assert!(matches!(
            read_connect(&mut v5, 1024),
            Err(ConnectError::Protocol(_))
        ));
        let mut v3 = BytesMut::from(
            &[
                0x10, 12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10,
            ][..],
        );
        assert!(matches!(
            read_connect(&mut v3, 1024),
            Err(ConnectError::Protocol(_))
        ));
        // A PUBLISH before any CONNECT, and a CONNECT with reserved flags set.
        let mut publish = BytesMut::from(&[0x30, 3, 0, 1, b'a'][..]);
        assert_eq!(
            read_connect(&mut publish, 1024),
            Err(ConnectError::NotConnect(0x30))
        );
        let mut flags = BytesMut::from(&[0x11, 0][..]);
        assert_eq!(
            read_connect(&mut flags, 1024),
            Err(ConnectError::NotConnect(0x11))
        );
        // Larger than allowed: refused from the length alone.
        let mut big = BytesMut::from(&[0x10, 0xff, 0xff, 0x03][..]);
        assert!(matches!(
            read_connect(&mut big, 1024),
            Err(ConnectError::TooLarge(_))
        ));
        // A client id that is not UTF-8.
        let mut bad = BytesMut::from(
            &[
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 2, 0xff, 0xfe,
            ][..],
        );
        assert!(matches!(
            read_connect(&mut bad, 1024),
            Err(ConnectError::Malformed(_))
        ));
    }

    #[test]
    fn forwarded_connect_carries_the_front_login_and_no_will() {
        let login = Login {
            username: "front".into(),
            password: "pw".into(),
        };
        let bytes = encode_connect("edge-gw-01", false, 60, &login);
        let mut buf = BytesMut::from(&bytes[..]);
        let r = read_connect(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(r.client_id, "edge-gw-01");
        assert!(!r.clean_session);
        assert_eq!(r.keep_alive, 60);
        assert_eq!(r.login, Some(login));
        assert_eq!(r.will, None);
        assert!(buf.is_empty());
    }

    #[test]
    fn refusal_connack_is_what_a_client_codec_reads() {
        for (r, code) in [
            (
                Refusal::ProtocolVersion,
                c::ConnectReturnCode::RefusedProtocolVersion,
            ),
            (
                Refusal::IdentifierRejected,
                c::ConnectReturnCode::BadClientId,
            ),
            (
                Refusal::ServerUnavailable,
                c::ConnectReturnCode::ServiceUnavailable,
            ),
            (
                Refusal::BadUserNameOrPassword,
                c::ConnectReturnCode::BadUserNamePassword,
            ),
            (Refusal::NotAuthorized, c::ConnectReturnCode::NotAuthorized),
        ] {
            let mut b = BytesMut::from(&r.connack()[..]);
            match c::Packet::read(&mut b, 16).unwrap() {
                c::Packet::ConnAck(a) => assert_eq!(a.code, code),
                p => panic!("{p:?}"),
            }
        }
    }

    /// Runs a stream through a splitter in pieces of `step` bytes: the bytes passed, the
    /// packets inspected, and whether a DISCONNECT ended it.
    fn split_all(stream: &[u8], step: usize) -> (Vec<u8>, Vec<Bytes>, bool) {
        let mut s = Splitter::default();
        let (mut passed, mut inspected, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in stream.chunks(step) {
            s.split(chunk, &mut out).unwrap();
            for p in &out {
                match p {
                    Piece::Pass(r) => passed.extend_from_slice(&chunk[r.clone()]),
                    Piece::Inspect(b) => inspected.push(b.clone()),
                    Piece::Disconnect => return (passed, inspected, true),
                    Piece::Oversized(n) => panic!("no limit, yet {n} bytes are oversized"),
                }
            }
        }
        (passed, inspected, false)
    }

    #[test]
    fn splitter_stops_at_a_packet_over_its_limit() {
        let publish = |n: usize| {
            client_bytes(c::Packet::Publish(c::Publish::new(
                "csb/v1/yuexi/gw-01/event",
                rumqttc::QoS::AtMostOnce,
                vec![1u8; n],
            )))
        };
        let (small, big) = (publish(100), publish(5000));
        let stream = [&small[..], &big[..], &small[..]].concat();
        let big_len = big.len() - 3; // a 2-byte remaining length after the first byte
        for step in [1, 2, 5, 64, 150, stream.len()] {
            let mut s = Splitter::with_limit(1024);
            let (mut passed, mut oversized, mut out) = (Vec::new(), None, Vec::new());
            'chunks: for chunk in stream.chunks(step) {
                s.split(chunk, &mut out).unwrap();
                for p in &out {
                    match p {
                        Piece::Pass(r) => passed.extend_from_slice(&chunk[r.clone()]),
                        Piece::Oversized(n) => {
                            oversized = Some(*n);
                            break 'chunks;
                        }
                        p => panic!("{p:?}"),
                    }
                }
            }
            assert_eq!(oversized, Some(big_len), "step {step}");
            // The small packet went on whole; of the big one at most its header did (when it
            // began in an earlier chunk), never its body; nothing after it.
            assert!(passed.starts_with(&small), "step {step}");
            assert!(
                passed.len() <= small.len() + 3,
                "step {step}: {}",
                passed.len()
            );
        }
    }

    #[test]
    fn splitter_passes_publishes_gathers_subscriptions_and_stops_at_disconnect() {
        let mut publish = c::Publish::new(
            "csb/v1/yuexi/gw-01/event",
            rumqttc::QoS::AtLeastOnce,
            vec![7u8; 300],
        );
        publish.pkid = 1;
        let publish = client_bytes(c::Packet::Publish(publish));
        let mut sub = c::Subscribe::new("csb/v1/yuexi/gw-01/ack", rumqttc::QoS::AtLeastOnce);
        sub.pkid = 2;
        let sub = client_bytes(c::Packet::Subscribe(sub));
        let ping = client_bytes(c::Packet::PingReq);
        let unsub = client_bytes(c::Packet::Unsubscribe(c::Unsubscribe::new(
            "csb/v1/yuexi/gw-01/ack",
        )));
        let mut stream = Vec::new();
        for part in [&publish[..], &sub[..], &ping[..], &unsub[..], &publish[..]] {
            stream.extend_from_slice(part);
        }
        let passed_expected = [&publish[..], &ping[..], &publish[..]].concat();
        stream.extend_from_slice(&client_bytes(c::Packet::Disconnect));
        // Not passed: after the DISCONNECT.
        stream.extend_from_slice(&publish);
        for step in [1, 2, 3, 7, 64, 301, stream.len()] {
            let (passed, inspected, disconnect) = split_all(&stream, step);
            assert_eq!(passed, passed_expected, "step {step}");
            assert_eq!(
                inspected,
                vec![sub.clone().freeze(), unsub.clone().freeze()]
            );
            assert!(disconnect, "step {step}");
        }
        assert_eq!(
            read_subscription(&sub.clone().freeze()),
            Ok(Subscription::Subscribe(
                2,
                vec![("csb/v1/yuexi/gw-01/ack".into(), 1)]
            ))
        );
        assert!(matches!(
            read_subscription(&unsub.clone().freeze()),
            Ok(Subscription::Unsubscribe(_, f)) if f == vec!["csb/v1/yuexi/gw-01/ack".to_string()]
        ));
        // A DISCONNECT-looking byte inside a payload is not one.
        let quiet = client_bytes(c::Packet::Publish(c::Publish::new(
            "t",
            rumqttc::QoS::AtMostOnce,
            vec![0xe0, 0x00],
        )));
        assert!(!split_all(&quiet, 1).2);
        // Five length bytes are malformed.
        let mut s = Splitter::default();
        assert_eq!(
            s.split(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], &mut Vec::new()),
            Err(FrameError)
        );
        // So is a SUBSCRIBE too large to be a gateway's.
        let mut s = Splitter::default();
        assert_eq!(
            s.split(&[0x82, 0xff, 0xff, 0x7f], &mut Vec::new()),
            Err(FrameError)
        );
    }

    #[test]
    fn boundaries_and_injected_packets_read_back_with_a_client_codec() {
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&[0x40, 2, 0, 1]); // PUBACK
        stream.extend_from_slice(&publish_qos0("csb/v1/yuexi/gw-01/ack", &[b'x'; 200]));
        stream.extend_from_slice(&suback(9, 1));
        stream.extend_from_slice(&unsuback(10));
        let mut b = Boundaries::default();
        for (i, byte) in stream.iter().enumerate() {
            b.feed(&[*byte]).unwrap();
            let end = [4, 4 + 3 + 24 + 200, 4 + 3 + 24 + 200 + 5, stream.len()];
            assert_eq!(b.at_boundary(), end.contains(&(i + 1)), "after byte {i}");
        }
        let read = |b: &mut BytesMut| c::Packet::read(b, 1 << 20).unwrap();
        assert!(matches!(read(&mut stream), c::Packet::PubAck(a) if a.pkid == 1));
        match read(&mut stream) {
            c::Packet::Publish(p) => {
                assert_eq!(p.topic, "csb/v1/yuexi/gw-01/ack");
                assert_eq!(p.qos, rumqttc::QoS::AtMostOnce);
                assert_eq!(p.payload.len(), 200);
            }
            p => panic!("{p:?}"),
        }
        assert!(matches!(read(&mut stream), c::Packet::SubAck(a) if a.pkid == 9));
        assert!(matches!(read(&mut stream), c::Packet::UnsubAck(a) if a.pkid == 10));
    }
}
