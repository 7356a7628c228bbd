//! Per-device payload signatures: a device may speak only for itself.
//!
//! rumqttd authenticates a connection but cannot restrict which topics it publishes to, so every
//! edge payload carries an HMAC-SHA256 over its topic and JSON body, keyed with a key derived
//! from the device's secret (issued by the hub). The hub verifies it with the key of the device
//! the topic names: device A, correctly logged in, cannot publish as device B.
//!
//! Wire form: the JSON object with one more member appended last, `"sig":"<64 hex>"`. The signed
//! bytes are `topic`, a newline, and the JSON object as it was before the member was appended,
//! so no canonical JSON is needed: the verifier cuts the suffix off and recomputes. Readers that
//! do not check signatures see an unknown field and ignore it.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Bytes of the key derived from a device secret.
pub type SigningKey = [u8; 32];

const SUFFIX_START: &[u8] = b",\"sig\":\"";
/// `,"sig":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = SUFFIX_START.len() + 64 + 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SigError {
    #[error("payload is not signed (no trailing \"sig\" member)")]
    Missing,
    #[error("signature does not match the device's key")]
    Mismatch,
    #[error("payload is not a JSON object")]
    NotObject,
    #[error("upload signature is not 64 hex digits")]
    Malformed,
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`: device signatures here, and the hub's
/// webhook signatures.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The signing key of a device secret (the secret itself is the MQTT password; a separate key
/// keeps one from being usable as the other).
pub fn signing_key(secret: &str) -> SigningKey {
    hmac(secret.as_bytes(), &[b"csb payload signature v1"])
}

/// Appends the signature member to `json` (a serialized JSON object) for `topic`.
pub fn sign(topic: &str, json: &[u8], key: &SigningKey) -> Result<Vec<u8>, SigError> {
    let body = trim_end(json);
    if body.last() != Some(&b'}') || body.len() < 2 {
        return Err(SigError::NotObject);
    }
    let mac = hmac(key, &[topic.as_bytes(), b"\n", body]);
    let mut out = Vec::with_capacity(body.len() + SUFFIX_LEN);
    out.extend_from_slice(&body[..body.len() - 1]);
    // `{}` has no members: no comma before ours.
    if body.len() == 2 {
        out.extend_from_slice(&SUFFIX_START[1..]);
    } else {
        out.extend_from_slice(SUFFIX_START);
    }
    out.extend_from_slice(hex_lower(&mac).as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

/// Checks the signature of `payload` on `topic` with `key`.
pub fn verify(topic: &str, payload: &[u8], key: &SigningKey) -> Result<(), SigError> {
    let p = trim_end(payload);
    // ... `"sig":"` + 64 hex + `"}` at the end, preceded by `,` or by the opening `{`.
    let tag = &SUFFIX_START[1..];
    if p.len() < tag.len() + 66 + 1 || !p.ends_with(b"\"}") {
        return Err(SigError::Missing);
    }
    let hex_at = p.len() - 66;
    let tag_at = hex_at - tag.len();
    if &p[tag_at..hex_at] != tag {
        return Err(SigError::Missing);
    }
    let hexsig = &p[hex_at..hex_at + 64];
    let body = match p[tag_at - 1] {
        b',' => &p[..tag_at - 1],
        b'{' => &p[..tag_at],
        _ => return Err(SigError::Missing),
    };
    let mut unsigned = Vec::with_capacity(body.len() + 1);
    unsigned.extend_from_slice(body);
    unsigned.push(b'}');
    let want = hex_lower(&hmac(key, &[topic.as_bytes(), b"\n", &unsigned]));
    // Constant time: the comparison must not tell an attacker how many digits were right.
    let diff = want
        .as_bytes()
        .iter()
        .zip(hexsig)
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// Header of an evidence upload carrying its signature ([`sign_upload`]).
pub const UPLOAD_SIGNATURE_HEADER: &str = "x-csb-signature";

/// The signature of an evidence upload (`PUT /api/v1/snapshots/{id}`), as 64 lowercase hex
/// digits: HMAC-SHA256 with the device's signing key over
/// `"PUT /api/v1/snapshots/{id}\n{x-csb-device}\n{x-csb-event}\n"` and then the body. `id`,
/// `device` and `event` are exactly as sent (URL segment and header values); `event` is empty
/// when the request carries no `x-csb-event`. Binding method, id and headers keeps a captured
/// upload from being replayed under another id, device or event.
pub fn sign_upload(key: &SigningKey, id: &str, device: &str, event: &str, body: &[u8]) -> String {
    hex_lower(&upload_mac(key, id, device, event, body))
}

/// Checks an upload's `signature` (from [`UPLOAD_SIGNATURE_HEADER`]) in constant time.
pub fn verify_upload(
    key: &SigningKey,
    id: &str,
    device: &str,
    event: &str,
    body: &[u8],
    signature: &str,
) -> Result<(), SigError> {
    let sig = signature.trim().as_bytes();
    if sig.len() != 64 {
        return Err(SigError::Malformed);
    }
    let want = hex_lower(&upload_mac(key, id, device, event, body));
    // Hex digits compared as sent: an uppercase signature is a different (wrong) one, which
    // keeps the comparison a plain constant-time byte compare.
    let diff = want
        .as_bytes()
        .iter()
        .zip(sig)
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

fn upload_mac(key: &SigningKey, id: &str, device: &str, event: &str, body: &[u8]) -> [u8; 32] {
    hmac(
        key,
        &[
            b"PUT /api/v1/snapshots/",
            id.as_bytes(),
            b"\n",
            device.as_bytes(),
            b"\n",
            event.as_bytes(),
            b"\n",
            body,
        ],
    )
}

/// Header of a signed model download naming the device, `{site}/{device}`.
pub const DOWNLOAD_DEVICE_HEADER: &str = "x-csb-device";
/// Header of a signed model download: when it was signed, Unix milliseconds (decimal).
pub const DOWNLOAD_TIMESTAMP_HEADER: &str = "x-csb-timestamp";
/// How far a signed download's timestamp may be from the hub's clock (either way).
pub const DOWNLOAD_MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// The signature of a model file download (`GET /api/v1/models/{name}/{version}/files/{kind}`),
/// as 64 lowercase hex digits: HMAC-SHA256 with the device's signing key over
/// `"GET {path}\n{device}\n{timestamp}\n"`. `path` is the request's path as sent (no query),
/// `device` and `timestamp` the values of [`DOWNLOAD_DEVICE_HEADER`] and
/// [`DOWNLOAD_TIMESTAMP_HEADER`]. The hub refuses a timestamp more than
/// [`DOWNLOAD_MAX_SKEW_MS`] from its clock, so a captured signature is good for minutes only.
pub fn sign_download(key: &SigningKey, path: &str, device: &str, timestamp: &str) -> String {
    hex_lower(&download_mac(key, path, device, timestamp))
}

/// Checks a download's `signature` in constant time (see [`sign_download`]); the timestamp's
/// freshness is the caller's to check.
pub fn verify_download(
    key: &SigningKey,
    path: &str,
    device: &str,
    timestamp: &str,
    signature: &str,
) -> Result<(), SigError> {
    let sig = signature.trim().as_bytes();
    if sig.len() != 64 {
        return Err(SigError::Malformed);
    }
    let want = hex_lower(&download_mac(key, path, device, timestamp));
    let diff = want
        .as_bytes()
        .iter()
        .zip(sig)
        .fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

fn download_mac(key: &SigningKey, path: &str, device: &str, timestamp: &str) -> [u8; 32] {
    hmac(
        key,
        &[
            b"GET ",
            path.as_bytes(),
            b"\n",
            device.as_bytes(),
            b"\n",
            timestamp.as_bytes(),
            b"\n",
        ],
    )
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..n]
}

/// Lower-case hex of `b`.
pub fn hex_lower(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex_lower(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn upload_signature_binds_id_device_event_and_body() {
        let k = signing_key("s3cret");
        let (id, dev, ev) = (
            "01J0000000000000000000000A",
            "yuexi/gw-01",
            "01J0000000000000000000000B",
        );
        let body: &[u8] = b"\xFF\xD8\xFFjpeg";
        let sig = sign_upload(&k, id, dev, ev, body);
        assert_eq!(sig.len(), 64);
        // Exactly the documented message, so other clients can implement it.
        let msg = [
            format!("PUT /api/v1/snapshots/{id}\n{dev}\n{ev}\n").as_bytes(),
            body,
        ]
        .concat();
        assert_eq!(sig, hex_lower(&hmac(&k, &[msg.as_slice()])));
        verify_upload(&k, id, dev, ev, body, &sig).unwrap();
        let bad = |r: Result<(), SigError>| assert_eq!(r, Err(SigError::Mismatch));
        bad(verify_upload(
            &signing_key("other"),
            id,
            dev,
            ev,
            body,
            &sig,
        ));
        bad(verify_upload(
            &k,
            "01J0000000000000000000000C",
            dev,
            ev,
            body,
            &sig,
        ));
        bad(verify_upload(&k, id, "yuexi/gw-02", ev, body, &sig));
        bad(verify_upload(&k, id, dev, "", body, &sig));
        bad(verify_upload(&k, id, dev, ev, b"\xFF\xD8\xFFjpeg!", &sig));
        bad(verify_upload(&k, id, dev, ev, body, &sig.to_uppercase()));
        assert_eq!(
            verify_upload(&k, id, dev, ev, body, "abc"),
            Err(SigError::Malformed)
        );
        // No event: signed with an empty line.
        let no_ev = sign_upload(&k, id, dev, "", body);
        verify_upload(&k, id, dev, "", body, &no_ev).unwrap();
    }

    #[test]
    fn download_signature_binds_path_device_and_timestamp() {
        let k = signing_key("s3cret");
        let (path, dev, ts) = (
            "/api/v1/models/yolox_nano/1.0.0/files/model",
            "yuexi/gw-01",
            "1760000000000",
        );
        let sig = sign_download(&k, path, dev, ts);
        assert_eq!(
            sig,
            hex_lower(&hmac(
                &k,
                &[format!("GET {path}\n{dev}\n{ts}\n").as_bytes()]
            ))
        );
        verify_download(&k, path, dev, ts, &sig).unwrap();
        let bad = |r: Result<(), SigError>| assert_eq!(r, Err(SigError::Mismatch));
        bad(verify_download(&signing_key("x"), path, dev, ts, &sig));
        bad(verify_download(
            &k,
            "/api/v1/models/yolox_nano/1.0.0/files/selftest",
            dev,
            ts,
            &sig,
        ));
        bad(verify_download(&k, path, "yuexi/gw-02", ts, &sig));
        bad(verify_download(&k, path, dev, "1760000000001", &sig));
        bad(verify_download(&k, path, dev, ts, &sig.to_uppercase()));
        assert_eq!(
            verify_download(&k, path, dev, ts, "00"),
            Err(SigError::Malformed)
        );
    }

    #[test]
    fn signed_payload_verifies_and_stays_json() {
        let k = signing_key("s3cret");
        let t = "csb/v1/yuexi/gw-01/event";
        let signed = sign(t, br#"{"v":1,"device":"gw-01"}"#, &k).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        assert_eq!(v["device"], "gw-01");
        assert_eq!(v["sig"].as_str().unwrap().len(), 64);
        verify(t, &signed, &k).unwrap();
        // Another device's key, another topic, a changed byte: all refused.
        assert_eq!(
            verify(t, &signed, &signing_key("other")),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            verify("csb/v1/yuexi/gw-02/event", &signed, &k),
            Err(SigError::Mismatch)
        );
        let tampered = String::from_utf8(signed.clone())
            .unwrap()
            .replace("gw-01", "gw-02");
        assert_eq!(verify(t, tampered.as_bytes(), &k), Err(SigError::Mismatch));
        assert_eq!(verify(t, br#"{"v":1}"#, &k), Err(SigError::Missing));
        let empty = sign(t, b"{}", &k).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
        verify(t, &empty, &k).unwrap();
        assert_eq!(sign(t, b"[1]", &k), Err(SigError::NotObject));
    }
}
