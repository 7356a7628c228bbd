//! Uploads evidence snapshots to the hub over HTTP (`PUT /api/v1/snapshots/{id}`), beside the
//! MQTT event that references them, so events stay small. The hub answers only after storing
//! the JPEG durably, and answers an identical re-upload with 200, so retrying is safe.
//!
//! With the agent's outbox, a snapshot is first stored there (class `evidence`) and one worker
//! uploads the oldest ones, deleting each only on the hub's 2xx — it survives crashes and
//! days-long outages like the events do. Without an outbox (tools) uploads are in memory with
//! bounded retries.
//!
//! With a device secret (`mqtt.secret_file`) every upload carries `X-Csb-Signature`
//! ([`csb_wire::sign::sign_upload`]), which a hub with `[auth] http = "required"` demands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use csb_wire::sign::{sign_upload, SigningKey, UPLOAD_SIGNATURE_HEADER};
use tokio::sync::{Notify, Semaphore};
use ulid::Ulid;

use crate::jitter::Backoff;
use crate::outbox::{Class, Outbox, Record};

/// Counters, reported in agent telemetry.
#[derive(Debug, Default)]
pub struct EvidenceStats {
    pub uploaded: AtomicU64,
    pub failed: AtomicU64,
    pub skipped_busy: AtomicU64,
}

#[derive(Clone)]
pub struct EvidenceUploader {
    client: reqwest::Client,
    base: String,
    device: String,
    slots: Arc<Semaphore>,
    pub stats: Arc<EvidenceStats>,
    outbox: Option<Arc<Outbox>>,
    wake: Arc<Notify>,
    /// Signs uploads, when the device has a secret.
    key: Option<SigningKey>,
}

/// What one upload attempt came to.
enum Upload {
    Stored,
    /// The hub refused it for good (4xx other than 408/429): retrying cannot help.
    Refused,
    /// Network error, timeout or 5xx: try again later.
    Retry,
}

impl EvidenceUploader {
    /// `base` is the hub's HTTP root, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, site: &str, device: &str) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(EvidenceUploader {
            client,
            base: base.trim_end_matches('/').to_string(),
            device: format!("{site}/{device}"),
            // A few at a time: evidence must not starve the event uplink on a thin link.
            slots: Arc::new(Semaphore::new(4)),
            stats: Arc::new(EvidenceStats::default()),
            outbox: None,
            wake: Arc::new(Notify::new()),
            key: None,
        })
    }

    /// Signs every upload with the device's key (the uplink's, from `mqtt.secret_file`). Call
    /// before [`EvidenceUploader::with_outbox`], whose worker works on a copy.
    pub fn with_signing_key(mut self, key: Option<SigningKey>) -> Self {
        self.key = key;
        self
    }

    /// Keeps snapshots in `outbox` until the hub has them, and starts the worker that uploads
    /// them (oldest first, one at a time, jittered back-off while the hub is unreachable).
    pub fn with_outbox(mut self, outbox: Arc<Outbox>, rt: &tokio::runtime::Handle) -> Self {
        self.outbox = Some(outbox.clone());
        let me = self.clone();
        rt.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 99);
            loop {
                let batch = outbox.evidence(8);
                if batch.is_empty() {
                    tokio::select! {
                        _ = me.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    continue;
                }
                for r in batch {
                    match me.upload_record(&r).await {
                        Upload::Stored => {
                            me.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                            backoff.reset();
                            let _ = outbox.ack(&[(Class::Evidence, r.seq)]);
                        }
                        Upload::Refused => {
                            me.stats.failed.fetch_add(1, Ordering::Relaxed);
                            let _ = outbox.ack(&[(Class::Evidence, r.seq)]);
                        }
                        Upload::Retry => {
                            tokio::time::sleep(backoff.next_delay()).await;
                            break;
                        }
                    }
                }
            }
        });
        self
    }

    async fn upload_record(&self, r: &Record) -> Upload {
        if r.payload.len() < 16 {
            return Upload::Refused;
        }
        let event = Ulid::from_bytes(r.payload[..16].try_into().unwrap_or([0; 16]));
        self.put_once(
            &r.id.to_string(),
            &event.to_string(),
            r.payload[16..].to_vec(),
        )
        .await
    }

    async fn put_once(&self, id: &str, event_id: &str, jpeg: Vec<u8>) -> Upload {
        let url = format!("{}/api/v1/snapshots/{id}", self.base);
        // The nil id stands for "no event" (an AI re-check's snapshot): no header then.
        let event_id = if event_id == Ulid::nil().to_string() {
            ""
        } else {
            event_id
        };
        let mut req = self
            .client
            .put(&url)
            .header("content-type", "image/jpeg")
            .header("x-csb-device", &self.device);
        if !event_id.is_empty() {
            req = req.header("x-csb-event", event_id);
        }
        if let Some(key) = &self.key {
            req = req.header(
                UPLOAD_SIGNATURE_HEADER,
                sign_upload(key, id, &self.device, event_id, &jpeg),
            );
        }
        let res = req.body(jpeg).send().await;
        match res {
            Ok(r) if r.status().is_success() => Upload::Stored,
            // Credentials missing or not yet known to the hub: an operator can fix that, so
            // keep the evidence and retry rather than drop it.
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%url, "hub refused the snapshot's credentials; will retry: {body}");
                Upload::Retry
            }
            Ok(r) if r.status().is_client_error() && r.status() != 408 && r.status() != 429 => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%url, %status, "hub refused snapshot: {body}");
                Upload::Refused
            }
            Ok(r) => {
                tracing::debug!(%url, status = %r.status(), "snapshot upload failed");
                Upload::Retry
            }
            Err(e) => {
                tracing::debug!(%url, "snapshot upload failed: {e}");
                Upload::Retry
            }
        }
    }

    /// Starts uploading `jpeg` as snapshot `id` of event `event_id`; returns at once. When more
    /// than a small backlog is already waiting the snapshot is skipped and counted (the event
    /// itself still goes out); the durable evidence queue is the outbox's job.
    pub fn spawn_upload(
        &self,
        rt: &tokio::runtime::Handle,
        id: String,
        event_id: String,
        jpeg: Vec<u8>,
    ) {
        if let (Some(ob), Ok(sid), Ok(eid)) = (
            &self.outbox,
            Ulid::from_string(&id),
            Ulid::from_string(&event_id),
        ) {
            let mut payload = Vec::with_capacity(16 + jpeg.len());
            payload.extend_from_slice(&eid.to_bytes());
            payload.extend_from_slice(&jpeg);
            match rt.block_on(ob.enqueue(Class::Evidence, sid, payload)) {
                Ok(_) => {
                    self.wake.notify_one();
                    return;
                }
                Err(e) => tracing::error!(snapshot = %id, "{e}; uploading from memory"),
            }
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.stats.skipped_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(snapshot = %id, "evidence uploads busy; snapshot skipped");
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _permit = permit;
            let mut delay = Duration::from_millis(500);
            for _ in 1..=5 {
                match me.put_once(&id, &event_id, jpeg.clone()).await {
                    Upload::Stored => {
                        me.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Upload::Refused => break,
                    Upload::Retry => {}
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            me.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(snapshot = %id, "snapshot not uploaded after retries");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::sign::{signing_key, verify_upload};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Accepts one HTTP/1.1 request and answers `status`; returns its headers (names
    /// lowercased) and body.
    async fn one_request(l: TcpListener, status: &str) -> (Vec<(String, String)>, Vec<u8>) {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        s.write_all(answer.as_bytes()).await.unwrap();
        (headers, buf[head_end..head_end + len].to_vec())
    }

    fn header(headers: &[(String, String)], name: &str) -> Option<String> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    #[tokio::test]
    async fn uploads_are_signed_with_the_device_key() {
        let key = signing_key("0123456789abcdef0123456789abcdef");
        let (id, ev) = (Ulid::new().to_string(), Ulid::new().to_string());
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        for signed in [true, false] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let server = tokio::spawn(one_request(l, "201 Created"));
            let up = EvidenceUploader::new(&base, "yuexi", "gw-01")
                .unwrap()
                .with_signing_key(signed.then_some(key));
            let outcome = up.put_once(&id, &ev, jpeg.clone()).await;
            assert!(matches!(outcome, Upload::Stored));
            let (headers, body) = server.await.unwrap();
            assert_eq!(body, jpeg);
            let device = header(&headers, "x-csb-device").unwrap();
            assert_eq!(device, "yuexi/gw-01");
            let sig = header(&headers, UPLOAD_SIGNATURE_HEADER);
            if signed {
                let event = header(&headers, "x-csb-event").unwrap();
                verify_upload(&key, &id, &device, &event, &body, &sig.unwrap()).unwrap();
            } else {
                assert_eq!(sig, None, "no secret, no signature");
            }
        }
        // 401 (credentials not known to the hub yet) is worth retrying; other 4xx are not.
        for (status, retry) in [("401 Unauthorized", true), ("400 Bad Request", false)] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let server = tokio::spawn(one_request(l, status));
            let up = EvidenceUploader::new(&base, "yuexi", "gw-01").unwrap();
            let outcome = up.put_once(&id, &ev, jpeg.clone()).await;
            server.await.unwrap();
            assert_eq!(matches!(outcome, Upload::Retry), retry, "{status}");
        }
    }
}
