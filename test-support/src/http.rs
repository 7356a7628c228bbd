//! Reading a hub over HTTP: JSON and text GETs, polling until something holds, query-string
//! and form encoding, NGSI-LD entity ids and a server-sent events reader.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// An HTTP client whose requests give up after 10 s.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// Polls `f` every 250 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `method {base}{path}` with a bearer token and an optional JSON body: the status and the
/// JSON answer (panics naming the request when the answer is not JSON).
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = client()
        .request(
            method.parse().expect("an HTTP method"),
            format!("{base}{path}"),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
    (status, v)
}

/// [`call`] that must succeed (2xx): its JSON answer.
pub async fn call_ok(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Value {
    let (status, v) = call(base, method, path, token, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// GET `url`; `None` unless 2xx JSON.
pub async fn get_json(url: &str) -> Option<Value> {
    get_json_with(url, None).await
}

/// GET `url` with an optional bearer token; `None` unless 2xx JSON.
pub async fn get_json_with(url: &str, token: Option<&str>) -> Option<Value> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// GET `url` as text, whatever the status (e.g. `/metrics`); panics if there is no answer.
pub async fn get_text(url: &str) -> String {
    get_text_with(url, None).await
}

/// [`get_text`] with an optional bearer token.
pub async fn get_text_with(url: &str, token: Option<&str>) -> String {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Percent-encodes `s` for a query string or path segment (all but RFC 3986's unreserved).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An `application/x-www-form-urlencoded` body of `pairs`, in order (keys and values encoded
/// with [`enc`], as a browser form or an Open311 client sends them).
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `id`s of an array of NGSI-LD entities.
pub fn entity_ids(body: &Value) -> BTreeSet<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Server-sent events read from a streaming response: (event, id, data).
pub struct SseReader {
    resp: reqwest::Response,
    /// What was received and not yet split into events.
    pub buf: String,
    /// Events read and passed over, in stream order: a later call may want them (changes of
    /// different entities in one ingest batch come in the order the twin applies them).
    pub seen: Vec<(String, String, Value)>,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        SseReader {
            resp,
            buf: String::new(),
            seen: Vec::new(),
        }
    }

    /// The first event (already read or still to come, within `secs`) that `pred` accepts.
    pub async fn next_matching(
        &mut self,
        secs: u64,
        pred: impl Fn(&str, &str, &Value) -> bool,
    ) -> (String, String, Value) {
        if let Some(i) = self.seen.iter().position(|(e, id, v)| pred(e, id, v)) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut ev, mut id, mut data) =
                    (String::from("message"), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keepalive comment
                }
                let v: Value = serde_json::from_str(&data).unwrap();
                if pred(&ev, &id, &v) {
                    return (ev, id, v);
                }
                self.seen.push((ev, id, v));
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "SSE event within the deadline; passed over: {:?}",
                        self.seen
                    )
                })
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enc_keeps_only_unreserved_characters() {
        assert_eq!(enc("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(
            enc("urn:ngsi-ld:Sensor:x y"),
            "urn%3Angsi-ld%3ASensor%3Ax%20y"
        );
        assert_eq!(enc("near;maxDistance==800"), "near%3BmaxDistance%3D%3D800");
    }
}
