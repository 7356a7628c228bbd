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
#[error("malformed packet length")]
pub struct FrameError;

/// Follows MQTT packet boundaries through a byte stream fed in arbitrary pieces, reading only
/// each packet's fixed header. Used on the client → broker direction after CONNECT, where the
/// only thing the front needs to know is where the client says DISCONNECT: its session then
/// ends without a will, and the DISCONNECT itself is not passed on (rumqttd would log a closed
/// connection after DISCONNECT as an error; a plain close is what it expects).
#[derive(Debug, Default)]
pub struct Framer {
    /// Payload bytes of the current packet still to skip.
    skip: usize,
    /// Length bytes read so far of the current fixed header, and the length they give.
    len_bytes: usize,
    len: usize,
    /// Inside a fixed header (its type byte was read).
    in_header: bool,
    /// A DISCONNECT was seen.
    disconnect: bool,
}

impl Framer {
    /// Consumes `data`: `Some(i)` when a DISCONNECT packet starts at `data[i]` (what follows it is
    /// not looked at). Errors when a remaining length is longer than MQTT allows.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, FrameError> {
        let mut i = 0;
        while i < data.len() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() - i);
                self.skip -= n;
                i += n;
                continue;
            }
            let b = data[i];
            if !self.in_header {
                if b >> 4 == 14 {
                    self.disconnect = true;
                    return Ok(Some(i));
                }
                self.in_header = true;
                (self.len_bytes, self.len) = (0, 0);
                i += 1;
                continue;
            }
            // A length byte: seven bits of the length; bit 7 says another follows (at most 4).
            self.len |= usize::from(b & 0x7f) << (7 * self.len_bytes);
            self.len_bytes += 1;
            i += 1;
            if b & 0x80 != 0 {
                if self.len_bytes == 4 {
                    return Err(FrameError);
                }
                continue;
            }
            self.in_header = false;
            self.skip = self.len;
        }
        Ok(None)
    }

    /// Whether a DISCONNECT packet went by.
    pub fn saw_disconnect(&self) -> bool {
        self.disconnect
    }
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

    #[test]
    fn framer_follows_packets_split_anywhere() {
        let mut stream = BytesMut::new();
        let big = vec![7u8; 300]; // a two-byte remaining length
        let mut publish =
            c::Publish::new("csb/v1/yuexi/gw-01/event", rumqttc::QoS::AtLeastOnce, big);
        publish.pkid = 1;
        stream.extend_from_slice(&client_bytes(c::Packet::Publish(publish)));
        stream.extend_from_slice(&client_bytes(c::Packet::PingReq));
        let before = stream.len();
        stream.extend_from_slice(&client_bytes(c::Packet::Disconnect));
        // Whatever comes after a DISCONNECT is not looked at.
        stream.extend_from_slice(&[0xff; 8]);
        for split in [1, 2, 3, 7, 64, before, stream.len()] {
            let mut f = Framer::default();
            let mut at = None;
            for (k, chunk) in stream.chunks(split).enumerate() {
                if let Some(i) = f.feed(chunk).unwrap() {
                    at = Some(k * split + i);
                    break;
                }
            }
            assert_eq!(at, Some(before), "split {split}");
            assert!(f.saw_disconnect(), "split {split}");
        }
        // A DISCONNECT-looking byte inside a payload is not one.
        let mut f = Framer::default();
        f.feed(&client_bytes(c::Packet::Publish(c::Publish::new(
            "t",
            rumqttc::QoS::AtMostOnce,
            vec![0xe0, 0x00],
        ))))
        .unwrap();
        assert!(!f.saw_disconnect());
        // Five length bytes are malformed.
        assert_eq!(
            Framer::default().feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FrameError)
        );
    }
}
