//! Uploads evidence snapshots to the hub over HTTP (`PUT /api/v1/snapshots/{id}`), beside the
//! MQTT event that references them, so events stay small. Uploads run in the background with
//! bounded concurrency and bounded retries; the hub answers an identical re-upload with 200, so
//! retrying is safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

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
        })
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
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.stats.skipped_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(snapshot = %id, "evidence uploads busy; snapshot skipped");
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _permit = permit;
            let url = format!("{}/api/v1/snapshots/{id}", me.base);
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=5 {
                let res = me
                    .client
                    .put(&url)
                    .header("content-type", "image/jpeg")
                    .header("x-csb-device", &me.device)
                    .header("x-csb-event", &event_id)
                    .body(jpeg.clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        me.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // 4xx other than 408/429 will not get better by retrying.
                    Ok(r) if r.status().is_client_error() && r.status() != 408 && r.status() != 429 => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        tracing::warn!(%url, %status, "hub refused snapshot: {body}");
                        break;
                    }
                    Ok(r) => tracing::debug!(%url, status = %r.status(), attempt, "snapshot upload failed"),
                    Err(e) => tracing::debug!(%url, attempt, "snapshot upload failed: {e}"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            me.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%url, "snapshot not uploaded after retries");
        });
    }
}
